"""Run one vLLM engine in a process of its own and print its greedy tokens (the tests' subprocess).

    python tests_vllm/engine.py '{"model": dir, "additional_config": {...}, "generations": [[[ids...], ...]], ...}'

vLLM spawns its engine core (and, under tensor parallelism, its workers) from the process that
creates ``LLM``; keeping that process separate from pytest's keeps each test's engine, settings
and environment apart. It writes ``spec["result_file"]`` (JSON): per generation, per prompt, the
generated token ids (a file, not stdout, which vLLM's processes share for their logs).
"""

import json
import sys

from rrattention.integrations.vllm import register

# At the top level, as the README says: vLLM spawns its processes on the CPU, and a spawned process
# re-imports this script before it reads the config that names the backend.
register()


def main(spec: dict) -> None:
    from vllm import LLM, SamplingParams

    llm = LLM(model=spec["model"], skip_tokenizer_init=True, block_size=spec.get("block_size", 128), enforce_eager=True,
              gpu_memory_utilization=0.3, max_num_batched_tokens=spec.get("max_num_batched_tokens", 512),
              max_model_len=2048, dtype="float32", tensor_parallel_size=spec.get("tp", 1),
              distributed_executor_backend="mp", additional_config=spec.get("additional_config", {}), seed=0,
              attention_backend=spec.get("attention_backend"))
    params = SamplingParams(temperature=0.0, max_tokens=spec.get("max_tokens", 8), ignore_eos=True)
    results = []
    for prompts in spec["generations"]:
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        results.append([list(o.outputs[0].token_ids) for o in outputs])
    with open(spec["result_file"], "w", encoding="utf-8") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
