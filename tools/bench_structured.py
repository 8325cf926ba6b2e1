"""The whole ``rr_attention`` call (estimate + select + attend, default config) against the dense
kernels, on inputs whose attention is structured like a long-context LLM's
(:mod:`structured_inputs`: local, sink-heavy and diffuse heads), side by side in one run.

    python tools/bench_structured.py --out results/kernels/h200/structured

Per length: cuDNN SDPA dense causal, FlashAttention-4 dense causal (when ``flash-attn-4`` is
installed and runs on this GPU), ``rr_attention`` at its defaults (dispatch picks the attention
backend: FA4 where installed and worth it, else our Triton kernel) and ``rr_attention`` with the
Triton backend forced (the portable path). Beside the times: the sparsity τ chose, the backends
that ran, the stage times of one timed call (``time_stages``, synchronising), the output's error
relative to cuDNN's (the method's approximation), and the speedups over each dense kernel and
over the fastest; and the same call made dense by spec §6 (``min_sparse_len`` above ``L``: the
dense stage's backend, FA4 where installed). ``--min-sparse-len`` below the default crossover runs sparse where the default
would run dense (the default's rows there are dense calls). Medians of
``triton.testing.do_bench``; writes ``bench_structured.{csv,md}`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention.methods.base import problem_of  # noqa: E402

from report import command, write_table  # noqa: E402  (tools/, on sys.path when this script runs)
from structured_inputs import structured_qkv  # noqa: E402


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=100, rep=1000, return_mode="median")


def measure(length: int, hq: int, hkv: int, d: int, cfg: rr.RRConfig) -> dict:
    q, k, v = structured_qkv(1, hq, hkv, length, d, torch.bfloat16, "cuda", seed=length)
    kr, vr = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
    row = {"L": length}
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        row["cudnn_dense_ms"] = bench(lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True))
        dense_out = F.scaled_dot_product_attention(q, kr, vr, is_causal=True)
    del kr, vr
    dense = {"cudnn": row["cudnn_dense_ms"]}
    if not rr.backends.get("fa4").not_supported_reasons("attention", problem_of(q, k, cfg)):
        from flash_attn.cute import flash_attn_func

        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        row["fa4_dense_ms"] = dense["fa4"] = bench(lambda: flash_attn_func(qt, kt, vt, causal=True))
        del qt, kt, vt
    for name, backend in (("rr", None), ("rr_triton", "triton")):
        row[f"{name}_ms"] = bench(lambda: rr.rr_attention(q, k, v, cfg, backend=backend))
        out, stats = rr.rr_attention(q, k, v, cfg, backend=backend, return_stats=True)
        row[f"{name}_sparsity"] = stats.sparsity
        row[f"{name}_attention_by"] = stats.backends.get("attention")
        row[f"{name}_rel_err_vs_cudnn"] = float((out.float() - dense_out.float()).norm() / dense_out.float().norm())
        _, timed = rr.rr_attention(q, k, v, cfg, backend=backend, return_stats=True, time_stages=True)
        for stage, ms in timed.timings_ms.items():
            row[f"{name}_{stage}_stage_ms"] = ms
        for kernel, ms in dense.items():
            row[f"{name}_speedup_vs_{kernel}"] = ms / row[f"{name}_ms"]
        row[f"{name}_speedup_vs_fastest_dense"] = min(dense.values()) / row[f"{name}_ms"]
    # the same call made dense by spec §6 (min_sparse_len above L): the dense stage's backend
    dense_cfg = dataclasses.replace(cfg, min_sparse_len=2 * length)
    row["rr_dense_call_ms"] = bench(lambda: rr.rr_attention(q, k, v, dense_cfg))
    row["rr_dense_call_by"] = rr.rr_attention(q, k, v, dense_cfg, return_stats=True)[1].backends["attention"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="16384,32768,65536,131072")
    ap.add_argument("--q-heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--min-sparse-len", type=int, default=None,
                    help="RRConfig.min_sparse_len (default: the measured crossover for the shape)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import pandas as pd

    cfg = rr.RRConfig(min_sparse_len=args.min_sparse_len)
    crossover = rr.crossover.min_sparse_len(args.head_dim, args.q_heads, args.kv_heads)
    records = []
    for length in [int(x) for x in args.lengths.split(",")]:
        records.append(measure(length, args.q_heads, args.kv_heads, args.head_dim, cfg))
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in records[-1].items()}, flush=True)
        torch.cuda.empty_cache()
    df = pd.DataFrame(records)
    props = torch.cuda.get_device_properties(0)
    provenance = (
        f"GPU: {props.name}; torch {torch.__version__}; triton {triton.__version__}; Python {platform.python_version()}; "
        f"git {os.environ.get('RRATTENTION_GIT_COMMIT', 'unknown')}; date {datetime.date.today()}; command: {command()}; B=1, Hq={args.q_heads}, "
        f"Hkv={args.kv_heads}, D={args.head_dim}, bf16, causal, tools/structured_inputs.py (seed = L); "
        f"RRConfig(min_sparse_len={args.min_sparse_len}) (default crossover for this shape: {crossover})"
    )
    write_table(df, args.out, "bench_structured", "Whole rr_attention on structured inputs", provenance)


if __name__ == "__main__":
    main()
