"""Spec §5 — block-sparse FlashAttention forward (Triton), mirroring ``reference.attention``.

One program computes one tile of ``BLOCK_M`` queries of one query head: it walks the row's
selected key blocks from ``kv_index`` (``kv_count`` of them), in sub-tiles of ``BLOCK_N`` keys,
with an online softmax in fp32. The token-level causal predicate ``key ≤ query + δ`` (and the
``Lk`` bound) is applied to every block not wholly in the past of the tile's first query, which
for any ``δ`` covers every block where it can bite; the other blocks run a mask-free loop.
GQA reads K/V of head ``h // G`` without repeating them.

On Hopper and later, for D=64 and D=128, the key and value tiles are loaded through rank-2 tensor
descriptors (TMA) over a ``[rows, columns]`` view of K and V (:func:`_row_view`), where the tensors
allow (fp16/bf16, 16-byte aligned). Per computed block against cuDNN dense on the H200
(``results/kernels/h200/rank2-fb09d93/``, random masks at densities 0.25–0.5): D=64 (9/3 heads,
frameworks' ``[B, L, H, D]`` memory) 0.84–0.85 at 32K and 0.90 at 64K–128K, against 0.77–0.84 with
pointer loads; D=128 (32/8 heads) 0.78–0.81 at 32K and 0.88–0.89 at 128K, the same as the rank-4
descriptors it replaces. A view's rows run on past a sequence's or head's keys into another's, so
the tiles that cross ``Lk`` keep masked pointer loads.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ._common import cdiv, check_forced_tma, dot_precision, has_tma, launch_config, next_pow2, sequence_bounds
from ._launch import Launches, launch


@triton.jit
def _load_kv(base, desc, row0, col0, offs_n, offs_d, col_ok, d_ok, stride_n, start_n, k_start,
             TMA: tl.constexpr):
    """The ``[BLOCK_N, BLOCK_D]`` key or value tile at key ``start_n``; zeros past ``Lk`` and ``D``
    (through a descriptor: only where the tile lies inside ``Lk``, see :func:`_row_view`)."""
    if TMA:
        tile = desc.load([row0 + start_n, col0])
    else:
        tile = tl.load(base + (k_start + offs_n).to(tl.int64)[:, None] * stride_n + offs_d[None, :],
                       mask=col_ok[:, None] & d_ok[None, :], other=0.0)
    return tile


@triton.jit
def _attend_tile(acc, m_i, l_i, q, k_base, v_base, desc_k, desc_v, k_row0, k_col0, v_row0, v_col0, offs_m, offs_d,
                 d_ok, start_n, k_start, k_len, delta, stride_kn, stride_vn, qk_scale, MASKED: tl.constexpr,
                 TMA: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One online-softmax step over keys ``[start_n, start_n + BLOCK_N)`` (base 2)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    col_ok = offs_n < k_len
    k = _load_kv(k_base, desc_k, k_row0, k_col0, offs_n, offs_d, col_ok, d_ok, stride_kn, start_n, k_start, TMA)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if MASKED:
        qk = tl.where((offs_n[None, :] <= (offs_m + delta)[:, None]) & col_ok[None, :], qk, float("-inf"))
    # The max of the unscaled products, scaled, is the max of the scaled ones (qk_scale > 0), and the
    # scale then rides in the exponent's FFMA: one multiply per logit fewer.
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
    p = tl.exp2(qk * qk_scale - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_kv(v_base, desc_v, v_row0, v_col0, offs_n, offs_d, col_ok, d_ok, stride_vn, start_n, k_start, TMA)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _attention_fwd_kernel(
    Q, K, V, Out, Lse, KvCount, KvIndex, CuSeqQ, CuSeqK, DescK, DescV,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_lb, stride_lh, stride_lm,
    stride_cb, stride_ch, stride_cm,
    stride_ib, stride_ih, stride_im,
    k_rows_seq, k_rows_head, k_cols_head, v_rows_seq, v_rows_head, v_cols_head,
    q_len_fixed, k_len_fixed, n_kblocks_grid, qk_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, VARLEN: tl.constexpr,
    DOT_PRECISION: tl.constexpr, TMA: tl.constexpr, TMA_EDGE: tl.constexpr, HEADS_FIRST: tl.constexpr,
):
    # Heaviest tiles (the last query blocks see the most keys) are scheduled first: within each
    # head, or (HEADS_FIRST) across all heads, so that a diffuse head's long rows do not start last.
    n_tiles = tl.num_programs(0)
    if HEADS_FIRST:
        order = tl.program_id(1) * n_tiles + tl.program_id(0)  # the order blocks are launched in
        tile = n_tiles - 1 - order // tl.num_programs(1)
        head = order % tl.num_programs(1)
    else:
        tile = n_tiles - 1 - tl.program_id(0)
        head = tl.program_id(1)
    seq = tl.program_id(2)
    q_start, q_len, k_start, k_len = sequence_bounds(CuSeqQ, CuSeqK, seq, q_len_fixed, k_len_fixed, VARLEN)
    if tile * BLOCK_M >= q_len:
        return
    delta = k_len - q_len
    kv_head = head // GROUP
    q_block = (tile * BLOCK_M) // BLOCK_SIZE

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < q_len
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + seq * stride_qb + head * stride_qh + (q_start + offs_m).to(tl.int64)[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + seq * stride_kb + kv_head * stride_kh
    v_base = V + seq * stride_vb + kv_head * stride_vh
    # where this sequence's and head's keys start in the descriptors' [rows, columns] view
    k_row0 = (k_start if VARLEN else seq * k_rows_seq) + kv_head * k_rows_head
    v_row0 = (k_start if VARLEN else seq * v_rows_seq) + kv_head * v_rows_head
    k_col0 = kv_head * k_cols_head
    v_col0 = kv_head * v_cols_head

    count = tl.load(KvCount + seq * stride_cb + head * stride_ch + q_block * stride_cm)
    index_row = KvIndex + seq * stride_ib + head * stride_ih + q_block * stride_im
    # Selected blocks are ascending, so those wholly in the past of the tile's first query (and
    # wholly inside Lk) form a prefix that needs no mask; the rest straddle the causal edge.
    last_unmasked = tl.minimum(tile * BLOCK_M + delta + 1, k_len) // BLOCK_SIZE - 1
    slots = tl.arange(0, BLOCK_K)
    row_blocks = tl.load(index_row + slots, mask=slots < n_kblocks_grid, other=0)
    n_unmasked = tl.sum(((slots < count) & (row_blocks <= last_unmasked)).to(tl.int32), 0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for it in range(0, n_unmasked):
        block_start = tl.load(index_row + it) * BLOCK_SIZE
        for sub in tl.static_range(BLOCK_SIZE // BLOCK_N):
            acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k_base, v_base, DescK, DescV, k_row0, k_col0, v_row0,
                                         v_col0, offs_m, offs_d, d_ok, block_start + sub * BLOCK_N, k_start, k_len,
                                         delta, stride_kn, stride_vn, qk_scale, False, TMA, BLOCK_N, DOT_PRECISION)
    for it in range(n_unmasked, count):
        block_start = tl.load(index_row + it) * BLOCK_SIZE
        for sub in tl.static_range(BLOCK_SIZE // BLOCK_N):
            # a descriptor's tile that crosses Lk would read the next sequence's or head's keys
            acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k_base, v_base, DescK, DescV, k_row0, k_col0, v_row0,
                                         v_col0, offs_m, offs_d, d_ok, block_start + sub * BLOCK_N, k_start, k_len,
                                         delta, stride_kn, stride_vn, qk_scale, True, TMA_EDGE, BLOCK_N, DOT_PRECISION)

    empty = l_i == 0.0  # no selected key is visible to the query
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    o_ptrs = Out + seq * stride_ob + head * stride_oh + (q_start + offs_m).to(tl.int64)[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    tl.store(Lse + seq * stride_lb + head * stride_lh + (q_start + offs_m).to(tl.int64) * stride_lm, lse, mask=row_ok)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_count: torch.Tensor,
    kv_index: torch.Tensor,
    *,
    block_size: int,
    scale: float,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    config: dict | None = None,
    launches: Launches | None = None,
    tma: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel; arguments are assumed validated (see ``rrattention.api``).

    Padded form: ``q`` ``[B, Hq, Lq, D]``, ``k, v`` ``[B, Hkv, Lk, D]``, ``kv_count`` int32
    ``[B, Hq, nbq]``, ``kv_index`` int32 ``[B, Hq, nbq, nbk]``; returns ``out`` ``[B, Hq, Lq, D]``
    and fp32 ``lse`` ``[B, Hq, Lq]``.

    Packed form (``cu_seqlens_q`` given): ``q`` ``[Tq, Hq, D]``, ``k, v`` ``[Tk, Hkv, D]``,
    ``kv_count`` ``[N, Hq, nbq_max]``, ``kv_index`` ``[N, Hq, nbq_max, nbk_max]``; returns
    ``out`` ``[Tq, Hq, D]`` and ``lse`` ``[Hq, Tq]``.

    ``out`` / ``lse`` may be passed preallocated; every valid element is written. ``tma``: load K
    and V through tensor descriptors (None: where :func:`tma_supported` allows; True forces it,
    which the CPU interpreter runs too).
    """
    varlen = cu_seqlens_q is not None
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    num_seqs = cu_seqlens_q.numel() - 1 if varlen else q.shape[0]
    out = torch.empty_like(q) if out is None else out
    if lse is None:
        lse_shape = (q.shape[1], q.shape[0]) if varlen else q.shape[:3]
        lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    if kv_count.shape[:2] != (num_seqs, q.shape[1]):  # a mask shared across sequences or heads
        kv_count = kv_count.expand(num_seqs, q.shape[1], -1)
    if kv_index.shape[:2] != (num_seqs, q.shape[1]):
        kv_index = kv_index.expand(num_seqs, q.shape[1], -1, -1)
    if kv_index.stride(-1) != 1:
        kv_index = kv_index.contiguous()
    if tma is None:
        tma = tma_supported(k, v)
    elif tma and (_row_view(k.shape, k.stride()) is None or _row_view(v.shape, v.stride()) is None
                  or k.shape[-1] != next_pow2(k.shape[-1])):
        raise ValueError(f"tma=True needs a power-of-two head dim and keys and values that _row_view can address, "
                         f"got shape {tuple(k.shape)} with strides {k.stride()} and {v.stride()}")
    elif tma:
        check_forced_tma(k.device)
    grid, scalars, constexprs, views = _attention_geometry(
        q.shape, q.stride(), k.shape, k.stride(), v.stride(), out.stride(), lse.stride(), kv_count.stride(),
        kv_index.shape, kv_index.stride(), q.dtype, num_seqs, varlen, max_seqlen_q, block_size, scale,
        tuple(sorted(config.items())) if config else (), tma,
    )
    if tma:
        block = [constexprs["BLOCK_N"], k.shape[-1]]
        desc_k, desc_v = (TensorDescriptor(x, list(shape), [row_stride, 1], block)
                          for x, (shape, row_stride) in zip((k, v), views))
    else:
        desc_k, desc_v = k, v  # unused
    dummy = kv_count  # CuSeq pointers are unused without VARLEN
    launch(_attention_fwd_kernel, grid, (q, k, v, out, lse, kv_count, kv_index, cu_seqlens_q if varlen else dummy,
                                         cu_seqlens_k if varlen else dummy, desc_k, desc_v), scalars, constexprs,
           launches)
    return out, lse


# Head dims whose TMA path was measured faster than the pointer loads (H200, 32K-128K, see the
# module docstring). D=256 has not been measured.
TMA_HEAD_DIMS = frozenset({64, 128})


def tma_supported(k: torch.Tensor, v: torch.Tensor) -> bool:
    """K and V are read through TMA descriptors: on a GPU of compute capability 9 or later, in
    fp16/bf16, for a head dim of :data:`TMA_HEAD_DIMS`, with 16-byte aligned base pointers and row
    strides, and rows that :func:`_row_view` can address."""
    if not k.is_cuda or k.dtype not in (torch.float16, torch.bfloat16) or not has_tma(k.device):
        return False
    size = k.element_size()
    return (k.shape[-1] in TMA_HEAD_DIMS
            and all(x.stride(-1) == 1 and x.data_ptr() % 16 == 0 and x.stride(-2 if x.dim() == 4 else 0) * size % 16 == 0
                    and _row_view(x.shape, x.stride()) is not None for x in (k, v)))


@functools.lru_cache(maxsize=256)  # pure; tma_supported asks on every call of the hot path
def _row_view(shape: tuple, strides: tuple) -> tuple | None:
    """Keys (or values) as one 2-D matrix of rows of ``D`` for a rank-2 descriptor, which loads
    faster than a rank-4 one over ``[B, Hkv, Lk, D]`` at D=64 (0.85 against 0.66 of cuDNN's speed
    per block at 32K on the H200) and as fast at D=128: ``((rows, columns), row stride, rows per
    sequence, rows per head, columns per head)``, or None where the tensor's strides do not allow one.

    A key row is one token's ``D`` values of one head. Padded ``[B, Hkv, Lk, D]``: the row of
    ``(b, h, n)`` is ``b·rows_seq + h·rows_head + n``, its first column ``h·cols_head``. Packed
    ``[Tk, Hkv, D]``: ``t + h·rows_head`` and ``h·cols_head``. Heads side by side in a row
    (frameworks' ``[B, L, H, D]`` memory) have ``rows_head = 0``; heads one after another
    (``[B, H, L, D]``) have ``cols_head = 0``. Rows past a sequence's or head's end are another
    sequence's or head's, so only tiles inside ``Lk`` may be loaded through the descriptor."""
    if len(shape) == 4:
        batch, heads, length, dim = shape
        seq_stride, head_stride, row_stride = strides[:3]
    else:
        (length, heads, dim), batch, seq_stride = shape, 1, 0
        row_stride, head_stride = strides[:2]
    if row_stride <= 0 or (batch > 1 and seq_stride % row_stride):
        return None
    rows_seq = seq_stride // row_stride if batch > 1 else 0
    if heads == 1:
        rows_head = cols_head = 0
    elif head_stride > 0 and head_stride % row_stride == 0:
        rows_head, cols_head = head_stride // row_stride, 0
    elif dim <= head_stride and (heads - 1) * head_stride + dim <= row_stride:
        rows_head, cols_head = 0, head_stride
    else:
        return None
    rows = (batch - 1) * rows_seq + (heads - 1) * rows_head + length
    return (rows, (heads - 1) * cols_head + dim), row_stride, rows_seq, rows_head, cols_head


@functools.lru_cache(maxsize=256)  # pure in its arguments: a plan's layers share one entry
def _attention_geometry(q_shape, q_stride, k_shape, k_stride, v_stride, o_stride, l_stride, count_stride, index_shape,
                        index_stride, dtype, num_seqs, varlen, max_seqlen_q, block_size, scale, config, tma):
    head_dim, q_heads = q_shape[-1], q_shape[1]
    group = q_heads // k_shape[1]
    if varlen:  # [T, H, D]: no batch stride; the token stride is dim 0
        q_strides, k_strides, v_strides, o_strides = ((0, x[1], x[0]) for x in (q_stride, k_stride, v_stride, o_stride))
        l_strides = (0, l_stride[0], l_stride[1])
        q_len_fixed = k_len_fixed = 0
        grid_q = max_seqlen_q
    else:
        q_strides, k_strides, v_strides, o_strides = (x[:3] for x in (q_stride, k_stride, v_stride, o_stride))
        l_strides = l_stride
        q_len_fixed, k_len_fixed = q_shape[2], k_shape[2]
        grid_q = q_len_fixed
    cfg = launch_config("attention_tma" if tma else "attention", head_dim=head_dim, block_size=block_size, dtype=dtype,
                        override=dict(config))
    n_kblocks = index_shape[-1]
    views = [_row_view(k_shape, x) for x in (k_stride, v_stride)] if tma else [None, None]
    view_scalars = tuple(n for view in views for n in (view[2:] if view else (0, 0, 0)))
    scalars = (*q_strides, *k_strides, *v_strides, *o_strides, *l_strides, *count_stride, *index_stride[:3],
               *view_scalars, q_len_fixed, k_len_fixed, n_kblocks, scale * math.log2(math.e))
    constexprs = dict(GROUP=group, HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), BLOCK_SIZE=block_size,
                      BLOCK_K=max(16, next_pow2(n_kblocks)), BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                      VARLEN=varlen, DOT_PRECISION=dot_precision(dtype), TMA=tma,
                      # the tiles of the blocks past the causal edge lie inside Lk: every padded
                      # sequence's keys fill their last block
                      TMA_EDGE=tma and not varlen and k_len_fixed % block_size == 0,
                      HEADS_FIRST=cfg["HEADS_FIRST"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    descriptors = [(view[0], view[1]) if view else None for view in views]
    return (cdiv(grid_q, cfg["BLOCK_M"]), q_heads, num_seqs), scalars, constexprs, descriptors
