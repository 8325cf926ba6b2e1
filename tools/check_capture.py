"""GPU check: a full SmolLM2 prefill through the backend captured in a CUDA graph, and under torch.compile.

    python tools/check_capture.py --out results/kernels/h200/check_capture.txt

SmolLM2-135M-Instruct (the offline asset if it is there, else a random-weight model of the same
shape, said in the report), bf16, on Shakespeare (or random tokens), ``RRConfig(min_sparse_len=0)``
so every prefill call takes the sparse path:

* CUDA graph: after warm-up on a side stream, ``model(ids)`` is captured and replayed; the replayed
  logits must equal the eager ones bit for bit (no host synchronisation may happen inside).
* torch.compile: ``torch.compile(model, fullgraph=True)`` with inductor must compile with no graph
  break (the attention is one custom-op node) and give logits within bf16 rounding of eager
  (relative error ≤ 2× that of eager SDPA against an fp32 model, same inputs).
Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention import assets  # noqa: E402


def load(length: int):
    cached = [assets.cache_dir() / name for name in ("SmolLM2-135M-Instruct.Q4_1.gguf", "shakespeare.txt")]
    if all(path.exists() for path in cached):  # never download here: GPU machines may have no network
        tokenizer, model = assets.load_smollm2(device="cuda", dtype=torch.bfloat16)
        tokens = tokenizer(assets.corpus("shakespeare")[: 6 * length], return_tensors="pt").input_ids[0]
        return model, tokens[:length][None].cuda(), "SmolLM2-135M-Instruct (real weights), Shakespeare"
    else:
        import transformers

        print(f"no offline assets in {assets.cache_dir()}; using a random-weight model of SmolLM2's shape")
        config = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                          num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                          rope_theta=1e5, tie_word_embeddings=True)
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
        ids = torch.randint(0, 49152, (1, length), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
        return model, ids, "random-weight model of SmolLM2's shape, random tokens"


def rel_err(x, ref) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    lines = []

    def report(line):
        print(line, flush=True)
        lines.append(line)

    model, ids, what = load(args.length)
    props = torch.cuda.get_device_properties(0)
    report(f"check_capture on {props.name}; torch {torch.__version__}; triton {triton.__version__}; "
           f"{datetime.date.today()}; command: python tools/check_capture.py {' '.join(sys.argv[1:])}; {what}; L={args.length}")
    rr.hf.configure(model, rr.RRConfig(min_sparse_len=0))
    ok = True
    with torch.no_grad():
        with rr.hf.collect_stats(model) as stats:
            eager = model(ids, use_cache=False, logits_to_keep=256).logits
        report(f"eager: {len(stats.records)} attention calls, sparsity {stats.sparsity():.3f}, "
               f"backends {stats.records[0].backends}")

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                model(ids, use_cache=False, logits_to_keep=256)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(ids, use_cache=False, logits_to_keep=256).logits
        captured.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        same = torch.equal(captured, eager)
        ok &= same
        report(f"{'PASS' if same else 'FAIL'} CUDA graph replay of the whole prefill: logits identical {same} "
               f"(max abs diff {float((captured.float() - eager.float()).abs().max()):.3g})")
        del graph, captured

        compiled = torch.compile(model, fullgraph=True)
        try:
            got = compiled(ids, use_cache=False, logits_to_keep=256).logits
            model.set_attn_implementation("sdpa")
            sdpa = model(ids, use_cache=False, logits_to_keep=256).logits
            reference = model.float()(ids, use_cache=False, logits_to_keep=256).logits
            model.to(torch.bfloat16)
            err_compiled, err_eager, err_sdpa = rel_err(got, eager), rel_err(eager, reference), rel_err(sdpa, reference)
            good = err_compiled <= 2 * max(err_eager, err_sdpa)
            report(f"{'PASS' if good else 'FAIL'} torch.compile(fullgraph=True, inductor): no graph break; logits rel err "
                   f"vs eager {err_compiled:.2e} (eager rrattention vs fp32 model {err_eager:.2e}, bf16 SDPA vs fp32 {err_sdpa:.2e})")
        except Exception as err:  # a graph break under fullgraph=True, or a compile failure
            good = False
            report(f"FAIL torch.compile(fullgraph=True): {type(err).__name__}: {str(err).splitlines()[0][:300]}")
        ok &= good
    report("ALL PASS" if ok else "SOME CHECKS FAILED")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
