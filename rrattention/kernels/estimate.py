"""Spec §2–§3 — fused RR estimator (Triton), mirroring ``reference.sampling`` and ``reference.estimate``.

Two kernels:

* ``_stride_means_kernel``: ``K̄_n`` of every key stride in fp32. For 16-bit inputs in the exact
  mode it is stored as ``hi + lo``, two fp16 terms, after scaling by the power of two that puts
  the largest element of its group of ``BLOCK_N`` strides (one tile of the estimator) in
  ``[2^14, 2^15)`` (the inverse goes beside it, one fp32 per group), so the logits below use the
  tensor cores yet carry 22 bits of each mean: a 16-bit ``q`` row, scaled the same way, is exact in
  fp16 (bf16's 8 mantissa bits fit fp16's 11), and the products of fp16 terms are exact in fp32.
  An element ``2^−17`` or more below its group's largest keeps fewer bits, but its error stays
  below ``2^−40`` of that largest element: the logits' absolute error, which is what the softmax
  sees, is as small as with a scale per stride. One scale per tile rather than per stride lets the
  estimator fold it into the rows' logit scale: no per-logit multiply, no per-stride load
  (8% faster on the H100, ``results/kernels/h100/tile-scale/``). Two fp16 terms rather than three bf16 ones (24
  bits): on the same launch config they were no faster, but only two tiles per stage fit shared
  memory at the faster D=128 config (256 rows, 2 stages; three took 266240 bytes against the
  H200's 232448, ``results/kernels/h200/two-terms/``). The fast mode rounds the mean once to the input's dtype,
  unscaled (``SPLITS=1``), as the paper's code does.
* ``_estimate_kernel``: persistent programs, a few per multiprocessor, each taking work items
  (sequence, KV head, chunk of ``ROWS / R`` (query block, query head) pairs of the KV group),
  longest causal chunks first. An item stacks the ``R`` sampled rows of each of its pairs, so
  each ``K̄`` tile is read once for all ``G`` heads of the group, and makes one pass over the
  visible key strides: each tile's logits are computed once, and their probabilities relative to
  the rows' running max are summed per key block into the program's scratch, with that max beside
  them (``ROWS × Lk/Bk`` sums per program, in L2 or HBM; sums and maxima tile-major, one
  contiguous store each per tile). At the item's end they are read back a tile ahead, rescaled to
  the final max and normaliser and summed over the ``R`` rows of each query block. Only the block
  scores are written; the ``(Lq/S) × (Lk/S)`` logits never leave registers. A two-pass kernel (max and sum, then the probabilities) needs no
  scratch but computes every logit twice: it was 1.4–1.6× slower on the H200
  (``results/kernels/h200/estimate_onepass.md``).

On Hopper the estimator reads the means through rank-2 tensor descriptors (TMA) over their
``[rows, D]`` view (:func:`means_tma_supported`): for D=128 always, 12–15% faster at 32K–128K on
the H200 in both modes, and for D=64 once its 128-row items fill 4 rounds of the programs
(:data:`MEANS_TMA_MIN_ROUNDS`), 25–30% faster at 128K; the same scores bit for bit
(``results/kernels/h200/means-tma/``).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ..reference.sampling import layer_hash as random_layer_hash
from ._common import cdiv, check_forced_tma, dot_precision, has_tma, launch_config, next_pow2, sequence_bounds
from ._launch import Launches, launch

POLICIES = {"round_robin": 0, "fixed": 1, "random": 2, "group_round_robin": 3}


@triton.jit
def _splitmix64(x):
    x = x + 0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    return x ^ (x >> 31)


@triton.jit
def _head_offsets(head, group_idx, first_head, layer_hash, POLICY: tl.constexpr, STRIDE: tl.constexpr, GROUP: tl.constexpr):
    """``r_h`` of spec §2 for the rows' global query heads ``head = first_head + group_idx``, where
    ``first_head`` is the global index of the KV group's first query head (see
    ``reference.head_offsets``); ``layer_hash`` is ``splitmix64(splitmix64(seed) ^ layer)``."""
    if POLICY == 1:
        r = tl.full(head.shape, STRIDE - 1, tl.int32)
    elif POLICY == 2:
        # One scalar hash per head of the group, spread over its rows: hashing the row vector in
        # 64 bits made Triton 3.6 give the offsets a layout its later selects reject.
        layer_hash = layer_hash.to(tl.uint64)
        r = tl.zeros(head.shape, tl.int32)
        for g in tl.static_range(GROUP):
            r_g = (_splitmix64(layer_hash ^ (first_head + g).to(tl.uint64)) % STRIDE).to(tl.int32)
            r = tl.where(group_idx == g, r_g, r)
    elif (POLICY == 3) and (STRIDE % GROUP == 0):
        per_group: tl.constexpr = STRIDE // GROUP
        r = (head % GROUP) * per_group + (head // GROUP) % per_group
    else:
        r = head % STRIDE
    return r


@triton.jit
def _unit_scale(amax):
    """``(2^e, 2^-e)`` per element of ``amax ≥ 0``: ``amax · 2^e`` lies in ``[2^14, 2^15)``, within
    fp16's range with its full precision. Built from the exponent bits, so both factors are exact
    powers of two; ``e`` is clamped so that both stay normal fp32 (zero rows get ``2^126``)."""
    biased = (amax.to(tl.int32, bitcast=True) >> 23) & 0xFF
    e = tl.minimum(tl.maximum(268 - biased, 1), 253)  # biased exponent of 2^(14 − exponent(amax))
    return (e << 23).to(tl.float32, bitcast=True), ((254 - e) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _stride_means_kernel(
    K, Hi, Lo, InvScale, CuSeqK,
    stride_kb, stride_kh, stride_kn,
    stride_mb, stride_mh, stride_mn,
    k_len_fixed, n_rows,
    STRIDE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    SPLITS: tl.constexpr, VARLEN: tl.constexpr,
):
    seq = tl.program_id(2)
    head = tl.program_id(1)
    if VARLEN:
        k_start = tl.load(CuSeqK + seq)
        k_len = tl.load(CuSeqK + seq + 1) - k_start
    else:
        k_start = 0
        k_len = k_len_fixed
    offs_n = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    acc = tl.zeros([BLOCK_S, BLOCK_D], tl.float32)
    base = K + seq * stride_kb + head * stride_kh
    for j in tl.static_range(STRIDE):
        pos = offs_n * STRIDE + j
        ok = pos < k_len  # keys past Lk count as zero
        acc += tl.load(base + (k_start + pos).to(tl.int64)[:, None] * stride_kn + offs_d[None, :],
                       mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    acc = acc / STRIDE
    out = seq * stride_mb + head * stride_mh + offs_n.to(tl.int64)[:, None] * stride_mn + offs_d[None, :]
    store_ok = (offs_n < n_rows)[:, None] & d_ok[None, :]
    if SPLITS == 2:
        # one scale per program: its BLOCK_S strides are one tile of the estimator
        factor, inverse = _unit_scale(tl.max(tl.max(tl.abs(acc), 1), 0))
        acc = acc * factor
        tl.store(InvScale + (seq * tl.num_programs(1) + head) * tl.num_programs(0) + tl.program_id(0), inverse)
    hi = acc.to(Hi.dtype.element_ty)
    tl.store(Hi + out, hi, mask=store_ok)
    if SPLITS == 2:
        tl.store(Lo + out, (acc - hi.to(tl.float32)).to(Lo.dtype.element_ty), mask=store_ok)


@triton.jit
def _tile_logits(q, Hi, Lo, DescHi, DescLo, inverse, mean_base, first_mean_row, stride_mn, n0, n_key_strides, d_ok,
                 last_stride, z_diag, n_unmasked, q_rows, row_ok, t, q_start, q_len, k_rows,
                 k_start, k_len, stride_qm, stride_kn, offs_d, BLOCK_N: tl.constexpr, STRIDE: tl.constexpr,
                 SPLITS: tl.constexpr, EXACT: tl.constexpr, ANTIDIAGONAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 TMA: tl.constexpr):
    """Logits of key strides ``[n0, n0 + BLOCK_N)``, ``−inf`` where not visible: ``q · K̄ᵀ`` (RR),
    or with ``ANTIDIAGONAL`` ``Σ_j q_{t+S−1−j} · k_{nS+j}`` (XAttention), without the logit scale,
    which the caller's exponent applies. With ``SPLITS=2`` ``q`` holds the fp16 rows scaled by
    ``2^e_r`` and the means their tile's ``2^e_n``: both are left in for the exponent's scale,
    except with ``EXACT``, whose ``z_diag`` (in units of ``2^e_r`` only) replaces the diagonal
    stride's logit, so the tile's ``inverse = 2^−e_n`` is undone here first. With ``TMA`` the
    means come through descriptors over their ``[rows, D]`` view, one row per stride, whose rows
    past ``n_key_strides`` are the next head's or zeros: only the last tile reaches them, and the
    causal mask sets them to ``−inf``."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    if ANTIDIAGONAL:
        z = tl.zeros([t.shape[0], BLOCK_N], tl.float32)
        for j in range(STRIDE):  # a loop, not unrolled: S live q/k tile pairs would not fit shared memory
            q_pos = t + STRIDE - 1 - j
            qj = tl.load(q_rows + (q_start + q_pos).to(tl.int64)[:, None] * stride_qm + offs_d[None, :],
                         mask=(row_ok & (q_pos < q_len))[:, None] & d_ok[None, :], other=0.0)
            k_pos = offs_n * STRIDE + j
            kj = tl.load(k_rows + (k_start + k_pos).to(tl.int64)[:, None] * stride_kn + offs_d[None, :],
                         mask=(k_pos < k_len)[:, None] & d_ok[None, :], other=0.0)
            z = tl.dot(qj, tl.trans(kj), z, input_precision=DOT_PRECISION)
    else:
        ptr = mean_base + offs_n.to(tl.int64)[:, None] * stride_mn
        load_mask = (offs_n < n_key_strides)[:, None] & d_ok[None, :]
        if TMA:
            hi = DescHi.load([first_mean_row + n0, 0])
        else:
            hi = tl.load(Hi + ptr, mask=load_mask, other=0.0)
        z = tl.dot(q, tl.trans(hi), input_precision=DOT_PRECISION)
        if SPLITS == 2:
            if TMA:
                lo = DescLo.load([first_mean_row + n0, 0])
            else:
                lo = tl.load(Lo + ptr, mask=load_mask, other=0.0)
            # accumulating in the product (not ``z += dot``) keeps one accumulator tile in registers
            z = tl.dot(q, tl.trans(lo), z, input_precision=DOT_PRECISION)
            if EXACT:
                z = z * inverse  # a power of two: exact, and |z| ≤ 2^15 · |K̄| · D cannot overflow
    if n0 >= n_unmasked:  # the tile reaches some row's diagonal stride
        if EXACT:
            z = tl.where(offs_n[None, :] == last_stride[:, None], z_diag[:, None], z)
        z = tl.where(offs_n[None, :] <= last_stride[:, None], z, float("-inf"))
    return z


@triton.jit
def _estimate_kernel(
    Q, K, Hi, Lo, InvScale, Scores, Partial, TileMax, CuSeqQ, CuSeqK, DescHi, DescLo,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_mb, stride_mh, stride_mn,
    stride_sb, stride_sh, stride_si,
    q_len_fixed, k_len_fixed, qk_scale, layer_hash, head_start, n_kv_heads, n_chunks, num_seqs, n_tiles,
    GROUP: tl.constexpr, POLICY: tl.constexpr, STRIDE: tl.constexpr, R: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLITS: tl.constexpr, EXACT: tl.constexpr, VARLEN: tl.constexpr, ANTIDIAGONAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, TMA: tl.constexpr,
):
    PAIRS: tl.constexpr = ROWS // R
    TILE_BLOCKS: tl.constexpr = BLOCK_N // R
    # Persistent: program p owns scratch slot p and takes work items (sequence, KV head, chunk of
    # PAIRS (query block, query head) pairs of the KV group, query block major) in rounds of P
    # items, longest causal chunks first, in snake order (p, then P-1-p) so that no program draws
    # the longest item of every round. Pairs rather than a (head, stride) grid: a group of G query
    # heads fills the rows whether G is a power of two or not.
    programs = tl.num_programs(0)
    slot = tl.program_id(0)
    n_items = n_chunks * n_kv_heads * num_seqs
    rows = tl.arange(0, ROWS)
    pairs = tl.arange(0, PAIRS)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    tile_cols = tl.arange(0, TILE_BLOCKS)
    # The scratch lies tile-major: a tile's ROWS maxima are one contiguous store, and its partial
    # sums another. Row-major, each row's maximum took a 32-byte sector of its own, 3-4% of the
    # kernel's time on the H100 (results/kernels/h100/tile-major-max/); the sums 2-4%
    # (results/kernels/h100/scratch-prefetch/).
    partial_rows = Partial + slot.to(tl.int64) * ROWS * n_tiles * TILE_BLOCKS + rows[:, None] * TILE_BLOCKS
    tile_max_rows = TileMax + slot.to(tl.int64) * ROWS * n_tiles + rows
    for round_ in range(0, tl.cdiv(n_items, programs)):
        item = round_ * programs + tl.where(round_ % 2 == 0, slot, programs - 1 - slot)
        kv_head = item % n_kv_heads
        seq = (item // n_kv_heads) % num_seqs
        pair0 = (n_chunks - 1 - item // (n_kv_heads * num_seqs)) * PAIRS
        q_start, q_len, k_start, k_len = sequence_bounds(CuSeqQ, CuSeqK, seq, q_len_fixed, k_len_fixed, VARLEN)
        if (item < n_items) & (pair0 // GROUP * R * STRIDE < q_len):
            delta = k_len - q_len
            n_key_strides = tl.cdiv(k_len, STRIDE)

            # Stage 1 (§2): row j of pair (query block b, head g) is query head kv_head·G + g sampling
            # token m·S + r_h of query stride m = b·R + j. (XAttention: the whole query stride m, t
            # its first token, visible up to its last query.) A valid row's block b is valid.
            group_idx = (pair0 + rows // R) % GROUP
            m = (pair0 + rows // R) // GROUP * R + rows % R
            head = kv_head * GROUP + group_idx
            q_rows = Q + seq * stride_qb + head.to(tl.int64)[:, None] * stride_qh
            if ANTIDIAGONAL:
                t = m * STRIDE
                row_ok = t < q_len
                last_stride = tl.where(row_ok, (tl.minimum(t + STRIDE, q_len) - 1 + delta) // STRIDE, -1)
                q = tl.zeros([ROWS, BLOCK_D], Q.dtype.element_ty)  # rows are loaded per tile, S tokens each
            else:
                first_head = head_start + kv_head * GROUP
                t = m * STRIDE + _head_offsets(first_head + group_idx, group_idx, first_head, layer_hash, POLICY,
                                               STRIDE, GROUP)
                row_ok = t < q_len
                last_stride = tl.where(row_ok, (t + delta) // STRIDE, -1)  # causal: stride n visible iff n·S ≤ t + δ
                q = tl.load(q_rows + (q_start + t).to(tl.int64)[:, None] * stride_qm + offs_d[None, :],
                            mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            k_rows = K + seq * stride_kb + kv_head * stride_kh

            z_diag = tl.zeros([ROWS], tl.float32)
            if EXACT:
                # Diagonal stride restricted to keys ≤ t + δ (the others count as zero, divisor stays S).
                visible_keys = (t + delta) % STRIDE + 1
                for j in tl.static_range(STRIDE):
                    kj = tl.load(k_rows + (k_start + last_stride * STRIDE + j).to(tl.int64)[:, None] * stride_kn
                                 + offs_d[None, :], mask=(row_ok & (j < visible_keys))[:, None] & d_ok[None, :],
                                 other=0.0)
                    z_diag += tl.sum(q.to(tl.float32) * kj.to(tl.float32), 1)
                z_diag = z_diag / STRIDE

            mean_base = seq * stride_mb + kv_head * stride_mh + offs_d[None, :]
            first_mean_row = (seq * stride_mb + kv_head * stride_mh) // HEAD_DIM  # in the means' [rows, D] view
            first_tile_scale = (seq * n_kv_heads + kv_head) * n_tiles  # see _stride_means_kernel
            if SPLITS == 2:
                q32 = q.to(tl.float32)
                q_factor, q_inverse = _unit_scale(tl.max(tl.abs(q32), 1))
                q_dot = (q32 * q_factor[:, None]).to(Hi.dtype.element_ty)
                z_diag = z_diag * q_factor  # in the units of the tiles' logits
                row_scale = q_inverse * qk_scale
            else:
                q_dot = q
            n_end = tl.max(last_stride) + 1

            # Stage 2 in one pass over the visible key strides (base 2): each tile's probabilities,
            # relative to the rows' running max, summed over the keys of each Bk block into the slot's
            # scratch with that max beside them. Tiles strictly before every valid row's diagonal
            # stride need no causal mask (nor the rewrite of exact_stride_causal).
            n_unmasked = tl.min(tl.where(row_ok, last_stride, 2147483647)) // BLOCK_N * BLOCK_N
            m_i = tl.full([ROWS], float("-inf"), tl.float32)
            l_i = tl.zeros([ROWS], tl.float32)
            for n0 in range(0, n_end, BLOCK_N):
                if SPLITS == 2:
                    inverse = tl.load(InvScale + first_tile_scale + n0 // BLOCK_N)
                    # At least fp32's smallest normal: a zero or tiny row's scale is subnormal,
                    # and −inf times a flushed zero would be NaN. Such a row's logits are below
                    # 2^−80, so their exponentials are 1 at either scale.
                    logit_scale = tl.maximum(row_scale if EXACT else row_scale * inverse, 1.1754943508222875e-38)
                    logit_scale_2d = logit_scale[:, None]
                else:
                    inverse = 1.0
                    logit_scale = qk_scale  # one for all rows
                    logit_scale_2d = qk_scale
                z = _tile_logits(q_dot, Hi, Lo, DescHi, DescLo, inverse, mean_base, first_mean_row, stride_mn, n0,
                                 n_key_strides, d_ok, last_stride, z_diag, n_unmasked, q_rows, row_ok, t, q_start,
                                 q_len, k_rows, k_start, k_len, stride_qm, stride_kn, offs_d, BLOCK_N, STRIDE, SPLITS,
                                 EXACT, ANTIDIAGONAL, DOT_PRECISION, TMA)
                # The max of the unscaled logits, scaled, is the max of the scaled ones (the scale
                # is positive), and the scale rides in the exponent's FFMA, one multiply per logit
                # fewer.
                m_new = tl.maximum(m_i, tl.max(z, 1) * logit_scale)
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                partial = tl.sum(tl.reshape(tl.exp2(z * logit_scale_2d - m_safe[:, None]), [ROWS, TILE_BLOCKS, R]),
                                 axis=2)
                l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(partial, 1)
                m_i = m_new
                tl.store(partial_rows + n0 // BLOCK_N * (ROWS * TILE_BLOCKS) + tile_cols[None, :], partial)
                tl.store(tile_max_rows + n0 // BLOCK_N * ROWS, m_new)
            tl.debug_barrier()  # the scratch is read back below by other threads of this program

            # Rescale each tile to the rows' final max, normalise, and sum the R rows of each query
            # block; every block of the rows is written, zeros past the last visible stride.
            m_final = tl.where(m_i == float("-inf"), 0.0, m_i)
            inv_l = tl.where(row_ok & (l_i > 0.0), 1.0 / tl.where(l_i > 0.0, l_i, 1.0), 0.0)
            n_key_blocks = tl.cdiv(k_len, R * STRIDE)
            query_block = ((pair0 + pairs) // GROUP)[:, None]
            s_base = (Scores + seq * stride_sb + (kv_head * GROUP + (pair0 + pairs) % GROUP).to(tl.int64)[:, None]
                      * stride_sh + query_block.to(tl.int64) * stride_si)
            out_rows = query_block < tl.cdiv(q_len, R * STRIDE)
            # Each tile's scratch is loaded one tile ahead (the last tile again at the end), so that the
            # loads are in flight while the tile before is summed: loaded where they were used, their
            # latency was 0.8 ms of the exact mode's 6.2 at 128K on the H100
            # (results/kernels/h100/scratch-prefetch/). Tiles past the last visible stride hold zeros.
            tile_max = tl.load(tile_max_rows)
            tile_partial = tl.load(partial_rows + tile_cols[None, :])
            for n0 in range(0, n_end, BLOCK_N):
                next_tile = tl.minimum(n0 + BLOCK_N, n_end - 1) // BLOCK_N
                next_max = tl.load(tile_max_rows + next_tile * ROWS)
                next_partial = tl.load(partial_rows + next_tile * (ROWS * TILE_BLOCKS) + tile_cols[None, :])
                # exp2(−inf) = 0 where a row saw nothing up to this tile: its final max is at least the tile's
                weight = tl.exp2(tile_max - m_final) * inv_l
                blocks = tl.sum(tl.reshape(tile_partial * weight[:, None], [PAIRS, R, TILE_BLOCKS]), axis=1)
                kb = (n0 // R + tile_cols)[None, :]
                tl.store(s_base + kb, blocks, mask=out_rows & (kb < n_key_blocks))
                tile_max, tile_partial = next_max, next_partial
            for n0 in range(tl.cdiv(n_end, BLOCK_N) * BLOCK_N, n_key_blocks * R, BLOCK_N):
                kb = (n0 // R + tile_cols)[None, :]
                tl.store(s_base + kb, tl.zeros([PAIRS, TILE_BLOCKS], tl.float32), mask=out_rows & (kb < n_key_blocks))
            tl.debug_barrier()  # the next item overwrites the scratch


@functools.lru_cache(maxsize=16)
def _multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; 3 under the CPU interpreter, where the persistent
    programs run one after another (three make the snake order's rounds reachable by small tests)."""
    if device.type != "cuda":
        return 3
    return torch.cuda.get_device_properties(device).multi_processor_count


def _splits(dtype: torch.dtype, antidiagonal: bool, override: int | None) -> int:
    """Terms of the stride means: 2 (scaled fp16) for 16-bit inputs, 1 for fp32 ones (exact in
    fp32) and for the antidiagonal scores (no means); ``override`` 1 is the fast mode."""
    allowed = (1,) if antidiagonal or dtype == torch.float32 else (1, 2)
    if override is None:
        return allowed[-1]
    if override not in allowed:
        raise ValueError(f"config SPLITS={override!r}: {dtype} inputs{' (antidiagonal)' if antidiagonal else ''} "
                         f"take one of {allowed}")
    return override


def estimate_block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    stride: int,
    block_size: int,
    head_shift: str,
    scale: float,
    layer: int = 0,
    seed: int = 0,
    head_start: int = 0,
    exact_stride_causal: bool = False,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    out: torch.Tensor | None = None,
    config: dict | None = None,
    antidiagonal: bool = False,
    precision: str = "exact",
    launches: Launches | None = None,
    tma: bool | None = None,
) -> torch.Tensor:
    """Launch the estimator; arguments are assumed validated (see ``rrattention.api``).

    Padded form: ``q`` ``[B, Hq, Lq, D]``, ``k`` ``[B, Hkv, Lk, D]`` → fp32 ``[B, Hq, nbq, nbk]``.
    Packed form (``cu_seqlens_q`` given): ``q`` ``[Tq, Hq, D]``, ``k`` ``[Tk, Hkv, D]`` → fp32
    ``[N, Hq, ceil(max_seqlen_q/Bk), ceil(max_seqlen_k/Bk)]``, zero outside each sequence's grid.
    ``precision="fast"`` holds the stride means in one term of the input's 16-bit type
    (``SPLITS=1``) instead of the exact two scaled fp16 terms. ``config`` overrides launch
    parameters (``ROWS``, ``BLOCK_N``, ``SPLITS``, warps, stages, ``PROGRAMS_PER_SM``, or
    ``PROGRAMS``: the number of persistent programs). Beside the means (``SPLITS × Lk/S × D`` per
    KV head and sequence, and with two terms one fp32 scale per tile of strides) the launch takes a scratch of
    ``programs × ROWS × ⌈Lk/S / BLOCK_N⌉ × (BLOCK_N·S/Bk + 1)`` fp32 values (148.5 MiB at 128K
    tokens with ``BLOCK_N=128`` on the H200's 132 multiprocessors at D=128: two programs of 128 rows
    each in either mode; with pointer loads, one of 256 rows in the exact mode; the same at D=64 on
    its descriptor entry, twice its 64-row pointer entry's).
    ``antidiagonal=True`` computes XAttention's stride scores instead (``head_shift`` and
    ``exact_stride_causal`` unused; see ``rrattention.methods.xattention``). ``launches``: a plan's
    launch cache (:mod:`rrattention.kernels._launch`). ``head_start``: the
    global index of query head 0 (tensor parallelism), for the offsets of spec §2. ``tma``: read
    the stride means through tensor descriptors (None: where :func:`means_tma_supported` allows;
    True forces it, False keeps the pointer loads).
    """
    varlen = cu_seqlens_q is not None
    if tma:
        check_forced_tma(q.device)
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    overrides = {"SPLITS": 1, **(config or {})} if precision == "fast" else (config or {})
    geo = _estimate_geometry(
        q.shape, q.stride(), k.shape, k.stride(), q.dtype, _multiprocessors(q.device),
        cu_seqlens_q.numel() - 1 if varlen else None,
        max_seqlen_q, max_seqlen_k, stride, block_size, head_shift, scale,
        random_layer_hash(seed, layer) if head_shift == "random" else 0, head_start, exact_stride_causal, antidiagonal,
        tuple(sorted(overrides.items())),
        means_tma_supported(q.device, q.dtype, q.shape[-1], antidiagonal) if tma is None else tma, tma is True,
    )
    if antidiagonal:  # keys are read token by token: no stride means
        means = (k.new_empty(1, 1, 1, 1),) * 3
    else:
        split_means = torch.empty(geo.means_shape, dtype=geo.means_dtype, device=q.device).unbind(0)
        if len(split_means) == 2:
            means = (*split_means, torch.empty(geo.scales_shape, dtype=torch.float32, device=q.device))
        else:
            means = (split_means[0],) * 3  # the unused pointers
        launch(_stride_means_kernel, geo.means_grid, (k, *means, cu_seqlens_k if varlen else means[0]),
               geo.means_scalars, geo.means_constexprs, launches)
    if out is None:
        out = (torch.zeros if varlen else torch.empty)(geo.scores_shape, dtype=torch.float32, device=q.device)
    scratch = torch.empty(geo.scratch_numel, dtype=torch.float32, device=q.device)
    partial, tile_max = scratch.split([geo.scratch_numel - geo.tile_max_numel, geo.tile_max_numel])
    dummy = means[0]
    if geo.constexprs["TMA"]:
        block = [geo.constexprs["BLOCK_N"], geo.means_shape[-1]]
        rows = math.prod(geo.means_shape[1:4])
        descriptors = tuple(TensorDescriptor(m, [rows, block[1]], [block[1], 1], block) for m in means[:2])
    else:
        descriptors = means[:2]  # unused
    launch(_estimate_kernel, geo.grid,
           (q, k, *means, out, partial, tile_max, cu_seqlens_q if varlen else dummy, cu_seqlens_k if varlen else dummy,
            *descriptors),
           (*geo.leading_scalars, *out.stride()[:3], *geo.trailing_scalars), geo.constexprs, launches)
    return out


# Head dims whose estimator reads the means through descriptors by default, and from how many
# rounds of work items per persistent program up (on the descriptor entry, whose items are 128
# rows). H200, graph replays (results/kernels/h200/means-tma/probe.txt): D=128 was 5-18% faster
# than the pointer loads at every length from 8K to 128K. D=64 (SmolLM2's 9/3 heads; 64-row items
# on its pointer entry) was 25-30% faster at 128K, where the items fill 4.4 rounds of the H200's
# 264 programs, and 1-24% slower at 8K-32K, at most 1.1 rounds: twice the rows per item leave half
# the items, too few to keep every program busy to the end. Between the two (64K, 2.2 rounds) it
# is not measured, so D=64 takes the descriptors from 4 rounds up.
MEANS_TMA_MIN_ROUNDS = {64: 4.0, 128: 0.0}


def means_tma_supported(device: torch.device, dtype: torch.dtype, head_dim: int, antidiagonal: bool) -> bool:
    """The estimator may read its stride means through tensor descriptors by default: on a GPU with
    TMA, for 16-bit inputs (the means are fp16 or the input's type, rows of ``D`` in the library's
    own contiguous buffer, so aligned) and a head dim of :data:`MEANS_TMA_MIN_ROUNDS`; never for the
    antidiagonal scores, which read no means. It does once the call's work items fill that head
    dim's rounds of the persistent programs."""
    return (not antidiagonal and dtype in (torch.float16, torch.bfloat16) and head_dim in MEANS_TMA_MIN_ROUNDS
            and has_tma(device))


class _EstimateGeometry(NamedTuple):
    """Everything about the estimator's launches that depends on shapes and settings only."""

    means_shape: tuple  # [SPLITS, N or B, Hkv, n_strides, D]
    scales_shape: tuple  # two terms: the fp32 inverse scales, [N or B, Hkv, n_tiles], one per tile of strides
    means_dtype: torch.dtype
    means_grid: tuple
    means_scalars: tuple
    means_constexprs: dict
    scores_shape: tuple
    scratch_numel: int  # fp32 elements of the programs' scratch: per-block partial sums, then tile maxima
    tile_max_numel: int
    grid: tuple
    leading_scalars: tuple  # the estimator's scalars before the scores' strides
    trailing_scalars: tuple  # and after them
    constexprs: dict


@functools.lru_cache(maxsize=256)  # pure in its arguments: a plan's layers share one entry
def _estimate_geometry(q_shape, q_stride, k_shape, k_stride, dtype, multiprocessors, num_packed, max_seqlen_q,
                       max_seqlen_k, stride, block_size, head_shift, scale, layer_hash, head_start, exact_stride_causal,
                       antidiagonal, config, tma, tma_forced) -> _EstimateGeometry:
    varlen = num_packed is not None
    head_dim = q_shape[-1]
    if varlen:
        num_seqs, q_heads, kv_heads = num_packed, q_shape[1], k_shape[1]
        q_len_fixed = k_len_fixed = 0
        q_strides, k_strides = (0, q_stride[1], q_stride[0]), (0, k_stride[1], k_stride[0])
        max_q, max_k = max_seqlen_q, max_seqlen_k
    else:
        num_seqs, q_heads, q_len_fixed, _ = q_shape
        kv_heads, k_len_fixed = k_shape[1], k_shape[2]
        q_strides, k_strides = q_stride[:3], k_stride[:3]
        max_q, max_k = q_len_fixed, k_len_fixed
    group = q_heads // kv_heads
    per_block = block_size // stride  # R
    override = dict(config)
    splits = _splits(dtype, antidiagonal, override.pop("SPLITS", None))
    kernel = "estimate_antidiagonal" if antidiagonal else "estimate_two_terms" if splits == 2 else "estimate"
    n_strides = cdiv(max_k, stride)

    def entry_launch(entry):
        """The entry's launch parameters, rows, strides per tile, chunks per KV head and programs."""
        cfg = launch_config(entry, head_dim=head_dim, block_size=block_size, dtype=dtype, override=override)
        rows = max(per_block, cfg.pop("ROWS"))
        n_chunks = cdiv(cdiv(max_q, block_size) * group, rows // per_block)  # of (query block, query head) pairs
        per_multiprocessor = cfg.pop("PROGRAMS_PER_SM")
        programs = min(n_chunks * kv_heads * num_seqs, cfg.pop("PROGRAMS", multiprocessors * per_multiprocessor))
        return cfg, rows, max(per_block, cfg.pop("BLOCK_N")), n_chunks, programs

    has_entry = tma and not antidiagonal and head_dim in MEANS_TMA_MIN_ROUNDS
    tma_launch = entry_launch(kernel + "_tma") if has_entry else None
    if tma_launch and not tma_forced:  # the default: descriptors where their entry was measured faster
        _, _, block_n, n_chunks, programs = tma_launch
        if block_n > 256 or n_chunks * kv_heads * num_seqs < MEANS_TMA_MIN_ROUNDS[head_dim] * programs:
            tma_launch = None
    tma = tma_forced or tma_launch is not None
    cfg, rows, block_n, n_chunks, programs = tma_launch or entry_launch(kernel)
    # a descriptor's box is at most 256 rows of at most 256 elements
    if tma_forced and (antidiagonal or dtype == torch.float32 or head_dim != next_pow2(head_dim)
                       or not 16 <= head_dim <= 256 or block_n > 256):
        raise ValueError(f"tma=True needs stride means (not antidiagonal) in a 16-bit type, a power-of-two head dim "
                         f"in [16, 256] and at most 256 strides per tile, got {dtype}, head dim {head_dim}, "
                         f"BLOCK_N={block_n}, antidiagonal={antidiagonal}")
    n_tiles = cdiv(n_strides, block_n)
    tile_max_numel = programs * rows * n_tiles
    means_shape = (splits, num_seqs, kv_heads, n_strides, head_dim)
    mean_strides = (kv_heads * n_strides * head_dim, n_strides * head_dim, head_dim)  # of one contiguous split
    block_s = block_n if splits == 2 else 64  # two terms: one scale per tile of the estimator
    if antidiagonal:
        scale = scale / stride
    return _EstimateGeometry(
        means_shape=means_shape,
        scales_shape=(num_seqs, kv_heads, n_tiles),
        means_dtype=torch.float16 if splits == 2 else dtype,
        means_grid=(cdiv(n_strides, block_s), kv_heads, num_seqs),
        means_scalars=(*k_strides, *mean_strides, k_len_fixed, n_strides),
        means_constexprs=dict(STRIDE=stride, HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), BLOCK_S=block_s,
                              SPLITS=splits, VARLEN=varlen, num_warps=8 if block_s * next_pow2(head_dim) > 8192 else 4),
        scores_shape=(num_seqs, q_heads, cdiv(max_q, block_size), cdiv(max_k, block_size)),
        scratch_numel=tile_max_numel * (1 + block_n // per_block),
        tile_max_numel=tile_max_numel,
        grid=(programs, 1, 1),  # three entries: the launch cache reads grid[2]
        # antidiagonal: the means' strides are unused (the pointers are placeholders)
        leading_scalars=(*q_strides, *k_strides, *mean_strides),
        trailing_scalars=(q_len_fixed, k_len_fixed, scale * math.log2(math.e), layer_hash, head_start, kv_heads,
                          n_chunks, num_seqs, n_tiles),
        constexprs=dict(GROUP=group, POLICY=POLICIES[head_shift], STRIDE=stride, R=per_block,
                        HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), ROWS=rows, BLOCK_N=block_n,
                        SPLITS=splits, EXACT=exact_stride_causal and not antidiagonal, VARLEN=varlen,
                        ANTIDIAGONAL=antidiagonal, DOT_PRECISION=dot_precision(dtype), TMA=bool(tma), **cfg),
    )
