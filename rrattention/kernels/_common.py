"""Launch parameters shared by the kernels."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# (kernel, head_dim) -> launch parameters, chosen by tools/bench_kernels.py --sweep (on an H100; the
# estimator's D=64 and D=128 entries, PROGRAMS_PER_SM included, on the H200 for its one-pass kernel,
# results/kernels/h200/estimate_onepass.md; D=64 re-swept in results/kernels/h200/model-masks/; its D=256
# and antidiagonal PROGRAMS_PER_SM are not swept). An attention entry and its TMA entry share BLOCK_N:
# a row's keys are summed tile by tile, so another BLOCK_N changes the output's last bits, and a plan
# whose CUDA-graph buffers take another layout than the caller's tensors must not (tools/gpu_check.py).
# Under the CPU interpreter the values only set tile shapes; smaller tiles run faster there.
_CONFIGS = {
    "attention": {
        64: dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=2, HEADS_FIRST=False),
        128: dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, HEADS_FIRST=False),
        256: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2, HEADS_FIRST=False),
    },
    # K and V through TMA (Hopper): the fastest of BLOCK_N 64/128, 4/8 warps and 2-4 stages at
    # 32K-128K on the H200 with rank-4 descriptors (`tools/bench_kernels.py --sweep L` repeats the
    # sweep). D=64: re-swept at 32K for the rank-2 descriptors (9/3 heads, [B, L, H, D] memory,
    # results/kernels/h200/model-masks/): 64-row tiles halve a tile's fixed cost, which dominates on
    # a model's masks (few blocks in many rows), 0.81 against 0.68 of cuDNN per block. HEADS_FIRST
    # (launch the heaviest tiles of every head first) measured slower at fb09d93 on random and
    # structured masks, 0.66-0.74 against 0.77-0.90 of cuDNN per block, except the near-empty
    # structured masks of 9/3 heads at D=64 (density 0.03-0.05), where it was faster (results/kernels/h200/rank2-fb09d93/)
    "attention_tma": {
        64: dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=2, HEADS_FIRST=False),
        128: dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, HEADS_FIRST=False),
        256: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2, HEADS_FIRST=False),
    },
    "estimate_antidiagonal": {
        64: dict(ROWS=64, BLOCK_N=64, num_warps=4, num_stages=1, PROGRAMS_PER_SM=2),
        128: dict(ROWS=64, BLOCK_N=64, num_warps=4, num_stages=1, PROGRAMS_PER_SM=2),
        256: dict(ROWS=32, BLOCK_N=32, num_warps=4, num_stages=1, PROGRAMS_PER_SM=2),
    },
    # One-term stride means (the fast mode, fp32 inputs).
    "estimate": {
        64: dict(ROWS=64, BLOCK_N=128, num_warps=4, num_stages=2, PROGRAMS_PER_SM=2),
        128: dict(ROWS=128, BLOCK_N=128, num_warps=4, num_stages=1, PROGRAMS_PER_SM=2),
        256: dict(ROWS=128, BLOCK_N=32, num_warps=8, num_stages=1, PROGRAMS_PER_SM=1),
    },
    # Two fp16 terms (the exact mode of 16-bit inputs): D=128 re-swept on the H200 at 32K, where
    # 256 rows on 8 warps with 2 stages took 0.52 ms against 0.61 for the one-term entry (which is
    # in turn faster for one term: 0.34 against 0.39); D=64's fastest entry was the one-term one.
    "estimate_two_terms": {
        64: dict(ROWS=64, BLOCK_N=128, num_warps=4, num_stages=2, PROGRAMS_PER_SM=2),
        128: dict(ROWS=256, BLOCK_N=128, num_warps=8, num_stages=2, PROGRAMS_PER_SM=1),
        256: dict(ROWS=128, BLOCK_N=32, num_warps=8, num_stages=1, PROGRAMS_PER_SM=1),
    },
    # The same two modes with the means through descriptors (Hopper, kernels/estimate.py's
    # MEANS_TMA_MIN_ROUNDS), swept on the H200 at 32K and 128K (results/kernels/h200/means-tma/).
    # Freed of the pointer loads' address arithmetic, the exact mode is fastest on the one-term
    # entry as well: 128 rows on 4 warps, one stage, two programs per multiprocessor. D=64 (9/3
    # heads) took the same entry in the fast mode and two stages in the exact mode at 128K. The
    # fast mode's D=128 entry takes two stages since the scratch read-back loads one tile ahead:
    # 2.4% faster at 128K and 3.7% at 32K on the H100 (results/kernels/h100/scratch-prefetch/;
    # the exact mode with two stages, 8.1 against 5.8 ms, holds four 32 KiB means tiles).
    "estimate_tma": {
        64: dict(ROWS=128, BLOCK_N=128, num_warps=4, num_stages=1, PROGRAMS_PER_SM=2),
        128: dict(ROWS=128, BLOCK_N=128, num_warps=4, num_stages=2, PROGRAMS_PER_SM=2),
    },
    "estimate_two_terms_tma": {
        64: dict(ROWS=128, BLOCK_N=128, num_warps=4, num_stages=2, PROGRAMS_PER_SM=2),
        128: dict(ROWS=128, BLOCK_N=128, num_warps=4, num_stages=1, PROGRAMS_PER_SM=2),
    },
}


def cdiv(a: int, b: int) -> int:
    # triton.cdiv is a constexpr function in recent Triton: several microseconds per host call.
    return -(-a // b)


def next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def block_row_tile(n_kblocks: int) -> dict:
    """``BLOCK_K`` and warps of a kernel whose program holds one whole row of key blocks (selection, FA4 lists)."""
    return dict(BLOCK_K=max(16, next_pow2(n_kblocks)), num_warps=4 if n_kblocks <= 512 else 8)


@functools.cache
def _capability_major(device_index: int | None) -> int:
    return torch.cuda.get_device_capability(device_index)[0]


def has_tma(device: torch.device) -> bool:
    """``device`` is a GPU with tensor-memory-accelerator loads (compute capability 9 or later)."""
    return device.type == "cuda" and _capability_major(device.index) >= 9


def check_forced_tma(device: torch.device) -> None:
    """A kernel's ``tma=True`` on a GPU without TMA is a ValueError (the CPU interpreter runs either path)."""
    if device.type == "cuda" and not has_tma(device):
        raise ValueError(f"tma=True needs a GPU of compute capability 9 or later, got {device} of capability "
                         f"{torch.cuda.get_device_capability(device)}")


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get true fp32 products (no TF32): kernels must reproduce the fp32 reference."""
    return "ieee" if dtype == torch.float32 else "tf32"


def launch_config(kernel: str, *, head_dim: int, block_size: int, dtype: torch.dtype, override: dict | None = None) -> dict:
    table = _CONFIGS[kernel]
    key = min((d for d in table if d >= head_dim), default=max(table))
    cfg = dict(table[key])
    if kernel in ("attention", "attention_tma"):
        cfg["BLOCK_M"] = min(cfg["BLOCK_M"], block_size)
        cfg["BLOCK_N"] = min(cfg["BLOCK_N"], block_size)
        if dtype == torch.float32:  # fp32 tiles take twice the registers and shared memory
            cap = 32 if head_dim > 128 else 64
            cfg["BLOCK_M"] = min(cfg["BLOCK_M"], cap)
            cfg["BLOCK_N"] = min(cfg["BLOCK_N"], cap)
            cfg["num_stages"] = 1 if head_dim > 128 else min(cfg["num_stages"], 2)
    elif dtype == torch.float32:
        cfg["ROWS"] = min(cfg["ROWS"], 32 if kernel == "estimate_antidiagonal" else 64 if head_dim > 128 else 128)
        cfg["BLOCK_N"] = min(cfg["BLOCK_N"], 32 if head_dim > 128 else 64)
        cfg["num_stages"] = 1
    if override:
        cfg.update(override)
    return cfg


@triton.jit
def sequence_bounds(CuSeqQ, CuSeqK, seq, q_len_fixed, k_len_fixed, VARLEN: tl.constexpr):
    """``(q_start, q_len, k_start, k_len)`` of sequence ``seq``: from ``cu_seqlens`` in the packed
    layout, else the fixed lengths of the padded batch (whose rows start at 0)."""
    if VARLEN:
        q_start = tl.load(CuSeqQ + seq)
        q_len = tl.load(CuSeqQ + seq + 1) - q_start
        k_start = tl.load(CuSeqK + seq)
        k_len = tl.load(CuSeqK + seq + 1) - k_start
    else:
        q_start = 0
        q_len = q_len_fixed
        k_start = 0
        k_len = k_len_fixed
    return q_start, q_len, k_start, k_len
