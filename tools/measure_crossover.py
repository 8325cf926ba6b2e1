"""Measure the dense/sparse crossover per (head dim, query heads, KV heads) on this GPU and write the
table the default ``min_sparse_len`` reads (``rrattention/data/crossover.json``).

    python tools/measure_crossover.py --table rrattention/data/crossover.json --out results/crossover/h200

For each shape and key length (B=1, Lq = Lk, bf16, causal, default ``RRConfig`` but sparse at every
length) it times, with ``triton.testing.do_bench`` medians:

* dense: the faster of SDPA with its own GQA (``enable_gqa``) and SDPA on repeated K/V, the two
  dense kernels a call falls back to (the framework's SDPA, the library's);
* sparse: estimate + select (the plan's method call, on inputs whose attention is local and
  sink-heavy: RoPE-rotated queries and keys sharing a direction) plus block-sparse attention on a
  random causal mask of the stated ``--density`` (computed blocks / visible blocks).

The crossover of a shape is the shortest measured length from which sparse is faster at that and
every longer measured length (2**31 − 1 if it never is). Times are per call, host work included.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention import backends, reference  # noqa: E402

SHAPES = [(64, 9, 3), (64, 16, 4), (128, 8, 8), (128, 28, 4), (128, 32, 8)]  # SmolLM2, …, Qwen2-7B, Llama-3-8B
LENGTHS = [1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536]
NEVER = 2**31 - 1


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding of ``[B, H, L, D]`` (half-split layout, as Llama)."""
    length, dim = x.shape[2], x.shape[3]
    inv = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angles = torch.arange(length, device=x.device, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    half = torch.cat([-x[..., dim // 2 :], x[..., : dim // 2]], -1)
    return x * cos + half * sin


def structured_qkv(q_heads: int, kv_heads: int, length: int, dim: int, seed: int):
    """Queries and keys sharing a direction per head, RoPE-rotated: attention concentrates on nearby
    tokens, with a sink at the first token (a large key) and a few diffuse heads (no shared direction)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    direction = torch.randn(1, kv_heads, 1, dim, device="cuda", generator=g)
    k = torch.randn(1, kv_heads, length, dim, device="cuda", generator=g) + 2.0 * direction
    k[:, :, 0] += 6.0 * direction[:, :, 0]
    shared = direction.repeat_interleave(q_heads // kv_heads, 1)
    diffuse = (torch.arange(q_heads, device="cuda") % 4 == 3).view(1, -1, 1, 1)
    q = torch.randn(1, q_heads, length, dim, device="cuda", generator=g) + torch.where(diffuse, 0.0, 2.0) * shared
    v = torch.randn(1, kv_heads, length, dim, device="cuda", generator=g)
    return rope(q).bfloat16(), rope(k).bfloat16(), v.bfloat16()


def random_causal_selection(q_heads: int, length: int, block_size: int, density: float, seed: int) -> backends.Selection:
    g = torch.Generator(device="cuda").manual_seed(seed)
    visible = reference.visible_blocks(length, length, block_size, "cuda")
    mask = (torch.rand(1, q_heads, *visible.shape, device="cuda", generator=g) < density) & visible
    mask |= torch.eye(*visible.shape, dtype=torch.bool, device="cuda")  # the diagonal, as the selection forces it
    return backends.Selection(mask, *reference.to_kv_index(mask))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--table", type=Path, default=None, help="write the crossover table here (JSON)")
    ap.add_argument("--out", type=Path, default=None, help="write every timing here (CSV and markdown)")
    args = ap.parse_args()
    import pandas as pd

    cfg = rr.RRConfig(min_sparse_len=0)
    method = rr.methods.get("rrattention")
    rows = []
    for dim, q_heads, kv_heads in SHAPES:
        for length in LENGTHS:
            q, k, v = structured_qkv(q_heads, kv_heads, length, dim, seed=length + q_heads)
            scale = dim**-0.5
            plan = rr.AttentionPlan(cfg, q_heads=q_heads, kv_heads=kv_heads, head_dim=dim, dtype=q.dtype,
                                    device=q.device, scale=scale, batch=1, q_len=length, k_len=length)
            planned = plan.layer_plan(None)
            ops = planned.ops
            kr, vr = k.repeat_interleave(q_heads // kv_heads, 1), v.repeat_interleave(q_heads // kv_heads, 1)
            gqa_ms = do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                              return_mode="median")
            repeat_ms = do_bench(lambda: reference.dense_causal_attention(q, k, v, scale=scale), return_mode="median")
            select_ms = do_bench(lambda: method.select(ops, q, k, planned.prepared), return_mode="median")
            fixed = random_causal_selection(q_heads, length, cfg.block_size, args.density, seed=length)
            attend_ms = do_bench(lambda: ops.attention.attend(q, k, v, fixed, block_size=cfg.block_size, scale=scale),
                                 return_mode="median")
            call_ms = do_bench(lambda: plan.run(q, k, v), return_mode="median")
            stats = plan.stats(plan.run(q, k, v))
            dense_ms = min(gqa_ms, repeat_ms)
            row = dict(head_dim=dim, q_heads=q_heads, kv_heads=kv_heads, L=length, sdpa_gqa_ms=gqa_ms,
                       sdpa_repeat_ms=repeat_ms, dense_ms=dense_ms, estimate_select_ms=select_ms,
                       attend_ms_at_density=attend_ms, sparse_ms=select_ms + attend_ms,
                       sparse_faster=select_ms + attend_ms < dense_ms, structured_call_ms=call_ms,
                       structured_sparsity=stats.sparsity)
            rows.append(row)
            print({key: round(val, 4) if isinstance(val, float) else val for key, val in row.items()}, flush=True)
            del q, k, v, kr, vr
            torch.cuda.empty_cache()
    df = pd.DataFrame(rows)
    entries = []
    for (dim, q_heads, kv_heads), shape in df.groupby(["head_dim", "q_heads", "kv_heads"], sort=False):
        wins = shape.sort_values("L").sparse_faster.tolist()
        lengths = shape.sort_values("L").L.tolist()
        first = next((n for i, n in enumerate(lengths) if all(wins[i:])), NEVER)
        entries.append(dict(head_dim=int(dim), q_heads=int(q_heads), kv_heads=int(kv_heads), min_sparse_len=int(first)))
    props = torch.cuda.get_device_properties(0)
    provenance = dict(gpu=props.name, date=str(datetime.date.today()), torch=torch.__version__, triton=triton.__version__,
                      command="python " + " ".join(map(shlex.quote, sys.argv)), density=args.density,
                      rule="shortest measured Lk from which estimate+select+attend(density) beats the faster dense SDPA "
                           "at that and every longer measured Lk; B=1, Lq=Lk, bf16, default RRConfig")
    print(pd.DataFrame(entries).to_string(index=False))
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(json.dumps({**provenance, "entries": entries}, indent=1) + "\n")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out / "crossover.csv", index=False)
        text = "\n".join(f"- {k}: {v}" for k, v in provenance.items())
        (args.out / "crossover.md").write_text(
            f"# Dense/sparse crossover\n\n{text}\n\n## Crossover per shape\n\n"
            + pd.DataFrame(entries).to_markdown(index=False) + "\n\n## Every timing (ms, medians)\n\n"
            + df.to_markdown(index=False, floatfmt=".4g") + "\n")


if __name__ == "__main__":
    main()
