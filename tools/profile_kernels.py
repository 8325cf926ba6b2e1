"""One launch of each Triton kernel at a benchmark shape, for a profiler to inspect:

    ncu --kernel-name regex:"_estimate_kernel|_attention_fwd_kernel|_select_kernel" --launch-skip 3 \\
        --launch-count 3 --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy \\
        --section LaunchStats python tools/profile_kernels.py --length 32768

The first round of launches compiles the kernels (ncu's --launch-skip steps over it).
``--precision`` sets the estimator's mode. ``--density D`` gives the attention ``bench_kernels.py``'s
random mask of that density instead of the selection the estimator makes of Gaussian inputs (nearly
dense).

``--trace N`` instead runs the attention stage N times through each backend that accepts the call
(``triton``, and ``fa4`` where installed), under ``torch.profiler``, and prints every GPU kernel
those calls launched with its per-call time: what share of a backend's stage is its kernel, and
what share goes to conversions (FA4's block lists) and copies. Beside them, per backend, the
stage's median time as ``bench_kernels.py`` takes it (``do_bench``: CUDA events around each call,
so GPU time left idle while the host prepares the call counts) and the host's time to issue one
call (N calls without synchronising, averaged).
"""

import argparse
import functools
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import triton
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention.kernels.block_sparse_attention import block_sparse_attention  # noqa: E402
from rrattention.kernels.estimate import estimate_block_scores  # noqa: E402
from rrattention.kernels.select import select_blocks  # noqa: E402
from rrattention.methods.base import problem_of  # noqa: E402

from bench_kernels import make_qkv, random_mask  # noqa: E402  (tools/, on sys.path when this script runs)

BLOCK, HEAD_DIM = 128, 128


def trace_attention(q, k, v, mask: torch.Tensor, calls: int) -> pd.DataFrame:
    """GPU time of every kernel ``calls`` attention stages launched, per backend that accepts them."""
    selection = rr.backends.Selection(mask, *rr.reference.to_kv_index(mask))
    scale = HEAD_DIM**-0.5
    rows = []
    for name in ("triton", "fa4"):
        backend = rr.backends.get(name)
        reasons = backend.not_supported_reasons("attention", problem_of(q, k, rr.RRConfig(block_size=BLOCK)))
        if reasons:
            print(f"{name}: declines ({'; '.join(reasons)})")
            continue
        attend = functools.partial(backend.attend, q, k, v, selection, block_size=BLOCK, scale=scale)
        attend()  # compiles
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                attend()
            torch.cuda.synchronize()
        for event in prof.key_averages():
            if event.device_time_total > 0:
                rows.append({"backend": name, "kernel": event.key[:90], "launches": event.count,
                             "ms_per_call": event.device_time_total / 1e3 / calls})
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            attend()
        host_ms = (time.perf_counter() - start) * 1e3 / calls
        torch.cuda.synchronize()
        stage_ms = triton.testing.do_bench(attend, warmup=50, rep=300, return_mode="median")
        rows.append({"backend": name, "kernel": "(stage, do_bench)", "launches": None, "ms_per_call": stage_ms})
        rows.append({"backend": name, "kernel": "(host, per call)", "launches": None, "ms_per_call": host_ms})
    table = pd.DataFrame(rows)
    if len(table):
        kernels = ~table["kernel"].str.startswith("(")
        table["share"] = (table["ms_per_call"] / table[kernels].groupby("backend")["ms_per_call"].sum()
                          .reindex(table["backend"]).to_numpy()).where(kernels)
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=32768)
    ap.add_argument("--density", type=float, default=None,
                    help="attend on a random mask of this density instead of the estimated selection")
    ap.add_argument("--layout", choices=("heads", "tokens"), default="heads",
                    help="q, k, v in [B, H, L, D] memory or a framework's [B, L, H, D]")
    ap.add_argument("--precision", choices=("exact", "fast"), default="exact", help="the estimator's mode")
    ap.add_argument("--trace", type=int, default=0, metavar="N",
                    help="profile N attention stages per backend with torch.profiler and print their kernels")
    args = ap.parse_args()
    if args.density is not None and not 0 < args.density <= 1:
        raise SystemExit(f"--density must lie in (0, 1], got {args.density}")
    if args.trace < 0:
        raise SystemExit(f"--trace must be a number of calls >= 0, got {args.trace}")
    length, scale = args.length, HEAD_DIM**-0.5
    q, k, v = make_qkv(32, 8, length, HEAD_DIM, args.layout)

    def estimate_and_select():
        scores = estimate_block_scores(q, k, stride=8, block_size=BLOCK, head_shift="round_robin", scale=scale,
                                       precision=args.precision)
        return select_blocks(scores, q_len=length, k_len=length, block_size=BLOCK, tau=0.95, selector="top_tau",
                             force_sink=True, force_diagonal=True, dense_last_query_block=True)

    random_lists = None
    if args.density is not None:
        mask = random_mask(32, length, BLOCK, args.density, seed=length)
        random_lists = rr.to_kv_index(mask)
    if args.trace:
        if random_lists is None:
            mask = estimate_and_select()[0]
        density = float(mask.sum() / (rr.reference.visible_blocks(length, length, BLOCK, "cuda").sum() * 32))
        table = trace_attention(q, k, v, mask, args.trace)
        print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; L={length}, 32/8 heads, D={HEAD_DIM}, "
              f"bf16, {args.layout} layout, density {density:.3f}, {args.trace} calls per backend")
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        return
    for _ in range(2):  # compile, then the launches to profile: estimate, select, attention in each round
        _, count, index = estimate_and_select()
        if random_lists is not None:
            count, index = random_lists
        block_sparse_attention(q, k, v, count, index, block_size=BLOCK, scale=scale)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
