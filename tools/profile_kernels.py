"""One launch of each Triton kernel at a benchmark shape, for a profiler to inspect:

    ncu --kernel-name regex:"_estimate_kernel|_attention_fwd_kernel|_select_kernel" --launch-skip 3 \\
        --launch-count 3 --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy \\
        --section LaunchStats python tools/profile_kernels.py --length 32768

The first round of launches compiles the kernels (ncu's --launch-skip steps over it).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rrattention.kernels.block_sparse_attention import block_sparse_attention  # noqa: E402
from rrattention.kernels.estimate import estimate_block_scores  # noqa: E402
from rrattention.kernels.select import select_blocks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=32768)
    args = ap.parse_args()
    length, scale = args.length, 128**-0.5
    q = torch.randn(1, 32, length, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 8, length, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, 8, length, 128, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):  # compile, then the launches to profile
        scores = estimate_block_scores(q, k, stride=8, block_size=128, head_shift="round_robin", scale=scale)
        _, count, index = select_blocks(scores, q_len=length, k_len=length, block_size=128, tau=0.95, selector="top_tau",
                                        force_sink=True, force_diagonal=True, dense_last_query_block=True)
        block_sparse_attention(q, k, v, count, index, block_size=128, scale=scale)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
