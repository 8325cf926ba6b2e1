"""Spec §5 — block-sparse FlashAttention forward (Triton), mirroring ``reference.attention``.

One program computes one tile of ``BLOCK_M`` queries of one query head: it walks the row's
selected key blocks from ``kv_index`` (``kv_count`` of them), in sub-tiles of ``BLOCK_N`` keys,
with an online softmax in fp32. The token-level causal predicate ``key ≤ query + δ`` (and the
``Lk`` bound) is applied to every block not wholly in the past of the tile's first query, which
for any ``δ`` covers every block where it can bite; the other blocks run a mask-free loop.
GQA reads K/V of head ``h // G`` without repeating them.

On Hopper and later, for D=128, the key and value tiles are loaded through tensor descriptors
(TMA) where the tensors allow (fp16/bf16, 16-byte aligned): 0.71–0.74 → 0.78–0.79 of cuDNN's speed
per computed block at 32K on the H200 and 0.78–0.80 → 0.84–0.87 at 128K, at densities 0.25–0.5
(``results/kernels/h200/tma-c45b631/``). A
descriptor's bounds are the tensor's, so in the packed layout the tiles that cross a sequence's
end keep masked pointer loads.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ._common import cdiv, dot_precision, launch_config, next_pow2, sequence_bounds
from ._launch import Launches, launch


@triton.jit
def _load_kv(base, desc, seq, kv_head, k_start, offs_n, offs_d, col_ok, d_ok, stride_n, start_n,
             TMA: tl.constexpr, VARLEN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """The ``[BLOCK_N, BLOCK_D]`` key or value tile at key ``start_n``; zeros past ``Lk`` and ``D``."""
    if TMA:  # the descriptor zero-fills past the tensor's bounds
        if VARLEN:  # [Tk, Hkv, D]
            tile = tl.reshape(desc.load([k_start + start_n, kv_head, 0]), (BLOCK_N, BLOCK_D))
        else:  # [B, Hkv, Lk, D]
            tile = tl.reshape(desc.load([seq, kv_head, start_n, 0]), (BLOCK_N, BLOCK_D))
    else:
        tile = tl.load(base + (k_start + offs_n).to(tl.int64)[:, None] * stride_n + offs_d[None, :],
                       mask=col_ok[:, None] & d_ok[None, :], other=0.0)
    return tile


@triton.jit
def _attend_tile(acc, m_i, l_i, q, k_base, v_base, desc_k, desc_v, seq, kv_head, offs_m, offs_d, d_ok, start_n,
                 k_start, k_len, delta, stride_kn, stride_vn, qk_scale, MASKED: tl.constexpr, TMA: tl.constexpr,
                 VARLEN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One online-softmax step over keys ``[start_n, start_n + BLOCK_N)`` (base 2)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    col_ok = offs_n < k_len
    k = _load_kv(k_base, desc_k, seq, kv_head, k_start, offs_n, offs_d, col_ok, d_ok, stride_kn, start_n, TMA, VARLEN,
                 BLOCK_N, BLOCK_D)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        qk = tl.where((offs_n[None, :] <= (offs_m + delta)[:, None]) & col_ok[None, :], qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
    p = tl.exp2(qk - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_kv(v_base, desc_v, seq, kv_head, k_start, offs_n, offs_d, col_ok, d_ok, stride_vn, start_n, TMA, VARLEN,
                 BLOCK_N, BLOCK_D)
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
    q_len_fixed, k_len_fixed, n_kblocks_grid, qk_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, VARLEN: tl.constexpr,
    DOT_PRECISION: tl.constexpr, TMA: tl.constexpr, TMA_EDGE: tl.constexpr,
):
    # Heaviest tiles (the last query blocks see the most keys) are scheduled first.
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
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
            acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k_base, v_base, DescK, DescV, seq, kv_head, offs_m, offs_d,
                                         d_ok, block_start + sub * BLOCK_N, k_start, k_len, delta, stride_kn,
                                         stride_vn, qk_scale, False, TMA, VARLEN, BLOCK_N, BLOCK_D, DOT_PRECISION)
    for it in range(n_unmasked, count):
        block_start = tl.load(index_row + it) * BLOCK_SIZE
        for sub in tl.static_range(BLOCK_SIZE // BLOCK_N):
            # a packed tile past the sequence's end would read the next sequence's keys
            acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k_base, v_base, DescK, DescV, seq, kv_head, offs_m, offs_d,
                                         d_ok, block_start + sub * BLOCK_N, k_start, k_len, delta, stride_kn,
                                         stride_vn, qk_scale, True, TMA_EDGE, VARLEN, BLOCK_N, BLOCK_D, DOT_PRECISION)

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
    grid, scalars, constexprs = _attention_geometry(
        q.shape, q.stride(), k.shape, k.stride(), v.stride(), out.stride(), lse.stride(), kv_count.stride(),
        kv_index.shape, kv_index.stride(), q.dtype, num_seqs, varlen, max_seqlen_q, block_size, scale,
        tuple(sorted(config.items())) if config else (), tma,
    )
    if tma:
        # one key row per load: [B, Hkv, Lk, D] → [1, 1, BLOCK_N, D]; packed [Tk, Hkv, D] → [BLOCK_N, 1, D]
        block = [constexprs["BLOCK_N"], 1, k.shape[-1]] if varlen else [1, 1, constexprs["BLOCK_N"], k.shape[-1]]
        desc_k, desc_v = (TensorDescriptor(x, list(x.shape), list(x.stride()), block) for x in (k, v))
    else:
        desc_k, desc_v = k, v  # unused
    dummy = kv_count  # CuSeq pointers are unused without VARLEN
    launch(_attention_fwd_kernel, grid, (q, k, v, out, lse, kv_count, kv_index, cu_seqlens_q if varlen else dummy,
                                         cu_seqlens_k if varlen else dummy, desc_k, desc_v), scalars, constexprs,
           launches)
    return out, lse


# Head dims whose TMA path was measured faster than the pointer loads (H200, 32K-128K). D=64 ran
# slower through the rank-4 descriptors: 0.79 -> 0.66 of cuDNN's speed per computed block at 32K
# (a rank-2 descriptor over contiguous [Hkv * Lk, D] keys reached 0.85 in a session experiment, but
# needs a layout that frameworks' [B, L, H, D] tensors do not have).
TMA_HEAD_DIMS = frozenset({128})


def tma_supported(k: torch.Tensor, v: torch.Tensor) -> bool:
    """K and V are read through TMA descriptors: on a GPU of compute capability 9 or later, in
    fp16/bf16, for a head dim of :data:`TMA_HEAD_DIMS`, with 16-byte aligned base pointers and strides."""
    if not k.is_cuda or k.dtype not in (torch.float16, torch.bfloat16) or not _has_tma(k.device.index):
        return False
    size = k.element_size()
    return (k.shape[-1] in TMA_HEAD_DIMS
            and all(x.stride(-1) == 1 and x.data_ptr() % 16 == 0 and all(s * size % 16 == 0 for s in x.stride()[:-1])
                    for x in (k, v)))


@functools.cache
def _has_tma(device_index: int | None) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


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
    scalars = (*q_strides, *k_strides, *v_strides, *o_strides, *l_strides, *count_stride, *index_stride[:3],
               q_len_fixed, k_len_fixed, n_kblocks, scale * math.log2(math.e))
    constexprs = dict(GROUP=group, HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), BLOCK_SIZE=block_size,
                      BLOCK_K=max(16, next_pow2(n_kblocks)), BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                      VARLEN=varlen, DOT_PRECISION=dot_precision(dtype), TMA=tma, TMA_EDGE=tma and not varlen,
                      num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return (cdiv(grid_q, cfg["BLOCK_M"]), q_heads, num_seqs), scalars, constexprs
