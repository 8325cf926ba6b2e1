"""A block mask as FlashAttention-4's block-sparse lists: per block row, the selected key blocks that
need the causal mask (partial) and those that lie wholly below it (full), each ascending.

A selected tile ``(i, j)`` of ``Bk × Bk`` is full when every query of block row ``i`` sees every key
of block ``j``: ``(j + 1)·Bk − 1 ≤ δ + i·Bk`` (bottom-right causal, ``δ = Lk − Lq``) and the block
ends inside the keys, ``(j + 1)·Bk ≤ Lk``. Every other selected tile is partial: FA4 applies its
causal and sequence-length masks to those only. One program per (sequence, head, block row), on
the device, with no host synchronisation.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import block_row_tile
from ._launch import Launches, launch


@triton.jit
def _block_lists_kernel(
    Mask, PartialCount, PartialIndex, FullCount, FullIndex,
    stride_mb, stride_mh, stride_mi,
    stride_cb, stride_ch, stride_ci,
    stride_xb, stride_xh, stride_xi,
    q_len, k_len, n_kblocks,
    BLOCK_SIZE: tl.constexpr, BLOCK_K: tl.constexpr,
):
    i = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    j = tl.arange(0, BLOCK_K)
    in_grid = j < n_kblocks
    selected = tl.load(Mask + seq * stride_mb + head * stride_mh + i * stride_mi + j, mask=in_grid, other=0) != 0
    whole = ((j + 1) * BLOCK_SIZE - 1 <= k_len - q_len + i * BLOCK_SIZE) & ((j + 1) * BLOCK_SIZE <= k_len)
    full = selected & whole
    partial = selected & ~whole
    count_at = seq * stride_cb + head * stride_ch + i * stride_ci
    index_at = seq * stride_xb + head * stride_xh + i * stride_xi
    tl.store(FullCount + count_at, tl.sum(full.to(tl.int32), 0))
    tl.store(PartialCount + count_at, tl.sum(partial.to(tl.int32), 0))
    tl.store(FullIndex + index_at + tl.cumsum(full.to(tl.int32), 0) - 1, j, mask=full)
    tl.store(PartialIndex + index_at + tl.cumsum(partial.to(tl.int32), 0) - 1, j, mask=partial)


def block_lists(block_mask: torch.Tensor, *, q_len: int, k_len: int, block_size: int,
                launches: Launches | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split bool ``block_mask [B, Hq, nbq, nbk]`` (a subset of the visible blocks) into FA4's lists.

    Returns:
        ``(partial_count, partial_index, full_count, full_index)``: int32 counts ``[B, Hq, nbq]`` and
        indices ``[B, Hq, nbq, nbk]``, the first ``count`` entries of each row ascending (the
        rest unspecified).
    """
    mask = block_mask if block_mask.stride(-1) == 1 else block_mask.contiguous()
    batch, heads, n_qblocks, n_kblocks = mask.shape
    device = mask.device
    partial_count, full_count = (torch.empty(batch, heads, n_qblocks, dtype=torch.int32, device=device) for _ in range(2))
    partial_index, full_index = (torch.empty(mask.shape, dtype=torch.int32, device=device) for _ in range(2))
    launch(_block_lists_kernel, (n_qblocks, heads, batch),
           (mask.view(torch.int8), partial_count, partial_index, full_count, full_index),
           (*mask.stride()[:3], *partial_count.stride(), *partial_index.stride()[:3], q_len, k_len, n_kblocks),
           _constexprs(block_size, n_kblocks), launches)
    return partial_count, partial_index, full_count, full_index


@functools.lru_cache(maxsize=64)
def _constexprs(block_size: int, n_kblocks: int) -> dict:
    return dict(BLOCK_SIZE=block_size, **block_row_tile(n_kblocks))
