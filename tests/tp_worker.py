"""One rank of transformers' tensor parallelism running the rrattention hook (tests/test_hf_tp.py).

    python -m torch.distributed.run --standalone --nproc-per-node N tests/tp_worker.py MODEL_DIR OUT_DIR

Each rank loads the model with ``tp_plan="auto"`` (gloo on the CPU, NCCL on GPUs), runs
:func:`run_cases` and saves its records to ``OUT_DIR/rank<r>.pt``. Without ``torchrun`` the test
runs the same cases on the unsharded model (TP=1).
"""

from __future__ import annotations

import os
import sys

import torch

import rrattention as rr

LEN, PAD = 512, 77

CONFIGS = {
    "round_robin": rr.RRConfig(stride=8, block_size=32, tau=0.4, min_sparse_len=0),
    "group_round_robin": rr.RRConfig(stride=8, block_size=32, tau=0.4, min_sparse_len=0, head_shift="group_round_robin"),
    "random": rr.RRConfig(stride=8, block_size=32, tau=0.4, min_sparse_len=0, head_shift="random", seed=5,
                          layer_overrides={1: {"tau": 0.25}}),
}


def inputs(vocab: int) -> list[dict]:
    """A padded batch (the packed path) and one unpadded sequence (the padded-layout plan)."""
    ids = torch.randint(0, vocab, (2, LEN), generator=torch.Generator().manual_seed(11))
    mask = torch.ones(2, LEN, dtype=torch.long)
    mask[1, :PAD] = 0  # left padding
    return [dict(input_ids=ids, attention_mask=mask), dict(input_ids=ids[:1])]


def run_cases(model) -> dict:
    """``{(config, input): {"logits", "records": [(layer, head_start, block_mask, sparsity_per_head)]}}``."""
    results = {}
    for name, cfg in CONFIGS.items():
        rr.hf.configure(model, cfg)
        for i, batch in enumerate(inputs(model.config.vocab_size)):
            with torch.no_grad(), rr.hf.collect_stats(model, block_masks=True) as stats:
                logits = model(**batch, use_cache=False).logits
            records = [(r.layer, r.head_start, r.block_mask, r.sparsity_per_head, r.is_dense)
                       for r in stats.prefill_records()]
            results[(name, i)] = dict(logits=logits, records=records)
    return results


def main(model_dir: str, out_dir: str) -> None:
    from transformers import AutoModelForCausalLM, DistributedConfig

    model = AutoModelForCausalLM.from_pretrained(model_dir, distributed_config=DistributedConfig(tp_plan="auto"),
                                                 dtype=torch.float32, attn_implementation=rr.hf.ATTN_IMPLEMENTATION)
    rank = torch.distributed.get_rank()
    results = run_cases(model.eval())
    results["tensor_parallel"] = rr.hf.tensor_parallel_rank(rr.hf.attention_modules(model)[0])
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
