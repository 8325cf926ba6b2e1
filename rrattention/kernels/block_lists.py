"""A block mask as FlashAttention-4's block-sparse lists: per block row, the selected key blocks that
need the causal mask (partial) and those that lie wholly below it (full), each ascending.

A selected tile ``(i, j)`` of ``Bk × Bk`` is full when every query of block row ``i`` sees every key
of block ``j``: ``(j + 1)·Bk − 1 ≤ δ + i·Bk`` (bottom-right causal, ``δ = Lk − Lq``) and the block
ends inside the keys, ``(j + 1)·Bk ≤ Lk``. Every other selected tile is partial: FA4 applies its
causal and sequence-length masks to those only. One program per (sequence, head, block row), on
the device, with no host synchronisation.

Padded batches take FA4's fixed-length layout (:func:`block_lists`), packed ones its varlen layout
(:func:`varlen_block_lists`), where sequence ``s``'s rows follow each other in one list per head.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import block_row_tile
from ._launch import Launches, launch


@triton.jit
def _split_row(Mask, PartialCount, PartialIndex, FullCount, FullIndex, i, q_len, k_len, n_kblocks,
               BLOCK_SIZE: tl.constexpr, BLOCK_K: tl.constexpr):
    """Row ``i`` of one (sequence, head)'s mask at ``Mask`` into its counts and lists."""
    j = tl.arange(0, BLOCK_K)
    selected = tl.load(Mask + j, mask=j < n_kblocks, other=0) != 0
    whole = ((j + 1) * BLOCK_SIZE - 1 <= k_len - q_len + i * BLOCK_SIZE) & ((j + 1) * BLOCK_SIZE <= k_len)
    full = selected & whole
    partial = selected & ~whole
    tl.store(FullCount, tl.sum(full.to(tl.int32), 0))
    tl.store(PartialCount, tl.sum(partial.to(tl.int32), 0))
    tl.store(FullIndex + tl.cumsum(full.to(tl.int32), 0) - 1, j, mask=full)
    tl.store(PartialIndex + tl.cumsum(partial.to(tl.int32), 0) - 1, j, mask=partial)


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
    count_at = seq * stride_cb + head * stride_ch + i * stride_ci
    index_at = seq * stride_xb + head * stride_xh + i * stride_xi
    _split_row(Mask + seq * stride_mb + head * stride_mh + i * stride_mi, PartialCount + count_at,
               PartialIndex + index_at, FullCount + count_at, FullIndex + index_at, i, q_len, k_len, n_kblocks,
               BLOCK_SIZE, BLOCK_K)


@triton.jit
def _varlen_block_lists_kernel(
    Mask, CuSeqlensQ, CuSeqlensK, CuRows, PartialCount, PartialIndex, FullCount, FullIndex,
    stride_mb, stride_mh, stride_mi,
    stride_ch, stride_xh, seq_slab,
    BLOCK_SIZE: tl.constexpr, BLOCK_K: tl.constexpr,
):
    i = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    q_len = tl.load(CuSeqlensQ + seq + 1) - tl.load(CuSeqlensQ + seq)
    k_len = tl.load(CuSeqlensK + seq + 1) - tl.load(CuSeqlensK + seq)
    n_kblocks = tl.cdiv(k_len, BLOCK_SIZE)
    # FA4 reads row i of sequence s at count [h, CuRows[s] + i] and list [h, s·seq_slab + i·n_kblocks(s)]
    count_at = head * stride_ch + tl.load(CuRows + seq) + i
    index_at = head * stride_xh + seq * seq_slab + i * n_kblocks
    if i * BLOCK_SIZE < q_len:  # the grid covers the longest sequence's rows
        _split_row(Mask + seq * stride_mb + head * stride_mh + i * stride_mi, PartialCount + count_at,
                   PartialIndex + index_at, FullCount + count_at, FullIndex + index_at, i, q_len, k_len, n_kblocks,
                   BLOCK_SIZE, BLOCK_K)


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


def varlen_block_lists(block_mask: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, *,
                       block_size: int, launches: Launches | None = None) -> tuple[torch.Tensor, ...]:
    """Split a packed batch's bool ``block_mask [N, Hq, nbq_max, nbk_max]`` (False outside each
    sequence's grid) into FA4's varlen lists; ``cu_seqlens_q, cu_seqlens_k`` int32 ``[N+1]``.

    Returns:
        ``(partial_count, partial_index, full_count, full_index, cu_rows, cu_lists)``: int32 counts
        ``[Hq, N·nbq_max]``, whose entry ``cu_rows[s] + i`` is row ``i`` of sequence ``s``
        (``cu_rows [N+1]``: the cumulative block rows, FA4's ``cu_total_m_blocks``), and indices
        ``[Hq, N·nbq_max·nbk_max]``, whose row ``i`` of sequence ``s`` starts at ``cu_lists[s] +
        i·nbk(s)`` (``cu_lists [N+1]``: FA4's ``cu_block_idx_offsets``; each sequence keeps a slab
        of ``nbq_max·nbk_max``). Entries past a row's count, or past the batch's rows, are unspecified.
    """
    mask = block_mask if block_mask.stride(-1) == 1 else block_mask.contiguous()
    n_seqs, heads, n_qblocks, n_kblocks = mask.shape
    device = mask.device
    # the row count of each sequence from its length, on the device: the offsets stay unread
    rows = torch.div(cu_seqlens_q.diff() + block_size - 1, block_size, rounding_mode="floor")
    cu_rows = torch.nn.functional.pad(rows.cumsum(0), (1, 0)).to(torch.int32)
    seq_slab = n_qblocks * n_kblocks
    cu_lists = torch.arange(0, (n_seqs + 1) * seq_slab, seq_slab, dtype=torch.int32, device=device)
    partial_count, full_count = (torch.empty(heads, n_seqs * n_qblocks, dtype=torch.int32, device=device) for _ in range(2))
    partial_index, full_index = (torch.empty(heads, n_seqs * seq_slab, dtype=torch.int32, device=device) for _ in range(2))
    launch(_varlen_block_lists_kernel, (n_qblocks, heads, n_seqs),
           (mask.view(torch.int8), cu_seqlens_q, cu_seqlens_k, cu_rows, partial_count, partial_index, full_count,
            full_index),
           (*mask.stride()[:3], partial_count.stride(0), partial_index.stride(0), seq_slab),
           _constexprs(block_size, n_kblocks), launches)
    return partial_count, partial_index, full_count, full_index, cu_rows, cu_lists


@functools.lru_cache(maxsize=64)
def _constexprs(block_size: int, n_kblocks: int) -> dict:
    return dict(BLOCK_SIZE=block_size, **block_row_tile(n_kblocks))
