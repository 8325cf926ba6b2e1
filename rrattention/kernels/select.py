"""Spec §4 — Top-τ block selection on device (Triton), mirroring ``reference.selection``.

One program per block row ``(sequence, head, i)``: it sorts the row by (score desc, index asc)
with a single 64-bit key, keeps each entry whose suffix mass (from the smallest entry up) exceeds
``(1 − τ)·T`` (the kept entries are a prefix of the order: those ranking at or above the last
kept one), ANDs the causal mask, ORs the forced blocks, and writes the dense mask, ``kv_count``
and ``kv_index`` (FlexAttention's layout). The sort runs on the narrowest power-of-two tile (down
to an eighth of the row) holding the row's visible and non-zero columns: a causal row ``i`` sees
``i + 1`` blocks, so most rows sort far fewer than ``nbk`` entries, with the same decisions.
Nothing leaves the device, so the whole path can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import block_row_tile, sequence_bounds
from ._launch import Launches, launch


@triton.jit
def _select_row(
    score_row, mask_row, count_at, index_row, i, q_len, k_len, n_qblocks, n_kblocks, n_kblocks_grid, keep_threshold,
    dense, BLOCK_SIZE: tl.constexpr, WIDTH: tl.constexpr, FORCED_FIRST: tl.constexpr, FORCE_SINK: tl.constexpr,
    FORCE_DIAGONAL: tl.constexpr, DENSE_LAST: tl.constexpr,
):
    """One block row's selection on a tile of ``WIDTH`` columns: every column past it has no mass
    and is neither visible nor forced, so it is not kept (written as such)."""
    j = tl.arange(0, WIDTH)
    # Padded rows and columns of a varlen grid select nothing.
    in_seq = j < tl.where(i < n_qblocks, n_kblocks, 0)

    last_key = tl.minimum((i + 1) * BLOCK_SIZE, q_len) - 1 + (k_len - q_len)
    visible = in_seq & (j * BLOCK_SIZE <= last_key)
    diagonal = last_key // BLOCK_SIZE
    placed_first = j < 0  # all False
    if FORCE_SINK:
        placed_first = placed_first | (j == 0)
    if FORCE_DIAGONAL:
        placed_first = placed_first | (j == diagonal)
    forced = placed_first & in_seq
    if DENSE_LAST:
        forced = forced | (visible & (i == n_qblocks - 1))

    score = tl.load(score_row + j, mask=in_seq, other=0.0)
    total = tl.sum(score, 0)
    if FORCED_FIRST:
        score = tl.where(placed_first, 0.0, score)
    # Rank by (value desc, index asc): non-negative fp32 bits order like the values; padding sorts last.
    bits = tl.where(in_seq, score.to(tl.int32, bitcast=True), -1).to(tl.int64)
    key = (bits << 32) | (WIDTH - 1 - j).to(tl.int64)  # distinct: a total order of the blocks
    ranked = tl.sort(key, descending=True)
    ranked_value = tl.where(ranked >= 0, (ranked >> 32).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
    keep_ranked = tl.cumsum(ranked_value, 0, reverse=True) > tl.where(dense, -1.0, keep_threshold * total)
    # The kept ranks are a prefix: a block is kept iff its key ranks at or above the last kept one,
    # which needs no second sort back to block order.
    last_kept = tl.min(tl.where(keep_ranked, ranked, 0x7FFFFFFFFFFFFFFF), 0)
    keep = ((key >= last_kept) & visible) | forced

    grid_ok = j < n_kblocks_grid
    tl.store(mask_row + j, keep.to(tl.int8), mask=grid_ok)
    count = tl.sum(keep.to(tl.int32), 0)
    tl.store(count_at, count)
    kept_before = tl.cumsum(keep.to(tl.int32), 0)
    position = tl.where(keep, kept_before - 1, count + j - kept_before)
    tl.store(index_row + position, j, mask=grid_ok)
    # Past the tile nothing is kept: the mask is 0 and the unkept indices follow in order.
    for start in range(WIDTH, n_kblocks_grid, WIDTH):
        column = start + j
        beyond = column < n_kblocks_grid
        tl.store(mask_row + column, tl.zeros([WIDTH], dtype=tl.int8), mask=beyond)
        tl.store(index_row + column, column, mask=beyond)


@triton.jit
def _select_kernel(
    Scores, Mask, KvCount, KvIndex, CuSeqQ, CuSeqK,
    stride_sb, stride_sh, stride_si,
    stride_mb, stride_mh, stride_mi,
    stride_cb, stride_ch, stride_ci,
    stride_xb, stride_xh, stride_xi,
    q_len_fixed, k_len_fixed, n_qblocks_grid, n_kblocks_grid, keep_threshold, min_sparse_len, single_query_dense,
    BLOCK_SIZE: tl.constexpr, BLOCK_K: tl.constexpr, FORCED_FIRST: tl.constexpr, FORCE_SINK: tl.constexpr,
    FORCE_DIAGONAL: tl.constexpr, DENSE_LAST: tl.constexpr, VARLEN: tl.constexpr,
):
    # The longest rows (most visible blocks, the widest tiles) are scheduled first.
    i = n_qblocks_grid - 1 - tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    _, q_len, _, k_len = sequence_bounds(CuSeqQ, CuSeqK, seq, q_len_fixed, k_len_fixed, VARLEN)
    n_qblocks = tl.cdiv(q_len, BLOCK_SIZE)
    n_kblocks = tl.cdiv(k_len, BLOCK_SIZE)
    # Spec §6 per sequence: short keys or a single query select every visible block (dense).
    dense = (k_len < min_sparse_len) | ((q_len == 1) & (single_query_dense != 0))

    score_row = Scores + seq * stride_sb + head * stride_sh + i * stride_si
    mask_row = Mask + seq * stride_mb + head * stride_mh + i * stride_mi
    count_at = KvCount + seq * stride_cb + head * stride_ch + i * stride_ci
    index_row = KvIndex + seq * stride_xb + head * stride_xh + i * stride_xi
    # A causal row sees diagonal + 1 blocks, and its estimator puts no mass past them: sort only the
    # columns that are visible or hold mass (the row's extent), on the narrowest tile that holds them.
    j = tl.arange(0, BLOCK_K)
    in_seq = j < tl.where(i < n_qblocks, n_kblocks, 0)
    held = in_seq & (tl.load(score_row + j, mask=in_seq, other=0.0) != 0.0)
    last_key = tl.minimum((i + 1) * BLOCK_SIZE, q_len) - 1 + (k_len - q_len)
    extent = tl.maximum(tl.max(tl.where(held, j + 1, 0), 0), tl.minimum(last_key // BLOCK_SIZE + 1, n_kblocks))
    if BLOCK_K >= 128:
        if extent <= BLOCK_K // 8:
            _select_row(score_row, mask_row, count_at, index_row, i, q_len, k_len, n_qblocks, n_kblocks, n_kblocks_grid,
                        keep_threshold, dense, BLOCK_SIZE, BLOCK_K // 8, FORCED_FIRST, FORCE_SINK, FORCE_DIAGONAL,
                        DENSE_LAST)
        elif extent <= BLOCK_K // 4:
            _select_row(score_row, mask_row, count_at, index_row, i, q_len, k_len, n_qblocks, n_kblocks, n_kblocks_grid,
                        keep_threshold, dense, BLOCK_SIZE, BLOCK_K // 4, FORCED_FIRST, FORCE_SINK, FORCE_DIAGONAL,
                        DENSE_LAST)
        elif extent <= BLOCK_K // 2:
            _select_row(score_row, mask_row, count_at, index_row, i, q_len, k_len, n_qblocks, n_kblocks, n_kblocks_grid,
                        keep_threshold, dense, BLOCK_SIZE, BLOCK_K // 2, FORCED_FIRST, FORCE_SINK, FORCE_DIAGONAL,
                        DENSE_LAST)
        else:
            _select_row(score_row, mask_row, count_at, index_row, i, q_len, k_len, n_qblocks, n_kblocks, n_kblocks_grid,
                        keep_threshold, dense, BLOCK_SIZE, BLOCK_K, FORCED_FIRST, FORCE_SINK, FORCE_DIAGONAL,
                        DENSE_LAST)
    else:
        _select_row(score_row, mask_row, count_at, index_row, i, q_len, k_len, n_qblocks, n_kblocks, n_kblocks_grid,
                    keep_threshold, dense, BLOCK_SIZE, BLOCK_K, FORCED_FIRST, FORCE_SINK, FORCE_DIAGONAL, DENSE_LAST)


def select_blocks(
    scores: torch.Tensor,
    *,
    q_len: int,
    k_len: int,
    block_size: int,
    tau: float,
    selector: str,
    force_sink: bool,
    force_diagonal: bool,
    dense_last_query_block: bool,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    min_sparse_len: int = 0,
    single_query_dense: bool = False,
    launches: Launches | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the selection; arguments are assumed validated (see ``rrattention.api``).

    Args:
        scores: fp32 ``[B, Hq, nbq, nbk]`` (packed form: ``[N, Hq, nbq_max, nbk_max]`` with the
            per-sequence lengths in ``cu_seqlens_q/k``; ``q_len``/``k_len`` are then unused).
        min_sparse_len, single_query_dense: the dense policies of spec §6 applied per sequence (for
            the packed form): rows of a sequence with fewer keys, or with one query, keep every visible block.

    Returns:
        ``(block_mask, kv_count, kv_index)``: bool ``[B, Hq, nbq, nbk]``, int32 ``[B, Hq, nbq]``,
        int32 ``[B, Hq, nbq, nbk]``.
    """
    varlen = cu_seqlens_q is not None
    scores = scores if scores.stride(-1) == 1 else scores.contiguous()
    mask = torch.empty(scores.shape, dtype=torch.int8, device=scores.device)
    kv_count = torch.empty(scores.shape[:3], dtype=torch.int32, device=scores.device)
    kv_index = torch.empty(scores.shape, dtype=torch.int32, device=scores.device)
    grid, scalars, constexprs = _select_geometry(
        scores.shape, scores.stride(), varlen, q_len, k_len, block_size, tau, selector, force_sink, force_diagonal,
        dense_last_query_block, min_sparse_len, single_query_dense,
    )
    dummy = kv_count
    launch(_select_kernel, grid, (scores, mask, kv_count, kv_index, cu_seqlens_q if varlen else dummy,
                                  cu_seqlens_k if varlen else dummy), scalars, constexprs, launches)
    return mask.view(torch.bool), kv_count, kv_index


@functools.lru_cache(maxsize=256)  # pure in its arguments: a plan's layers share one entry
def _select_geometry(shape, score_stride, varlen, q_len, k_len, block_size, tau, selector, force_sink, force_diagonal,
                     dense_last_query_block, min_sparse_len, single_query_dense):
    batch, heads, n_qblocks, n_kblocks = shape
    grid_strides = (heads * n_qblocks * n_kblocks, n_qblocks * n_kblocks, n_kblocks)  # mask and kv_index
    count_strides = (heads * n_qblocks, n_qblocks, 1)
    scalars = (*score_stride[:3], *grid_strides, *count_strides, *grid_strides, 0 if varlen else q_len,
               0 if varlen else k_len, n_qblocks, n_kblocks, 1.0 - tau, min_sparse_len, int(single_query_dense))
    constexprs = dict(BLOCK_SIZE=block_size, FORCED_FIRST=selector == "forced_first", FORCE_SINK=force_sink,
                      FORCE_DIAGONAL=force_diagonal, DENSE_LAST=dense_last_query_block, VARLEN=varlen,
                      **block_row_tile(n_kblocks))
    return (n_qblocks, heads, batch), scalars, constexprs
