"""Packed variable-length form (flash-attn convention): every sequence runs as if alone with batch 1."""

from __future__ import annotations

from typing import Any

import torch

from . import reference
from ._checks import check_finite, check_length, check_qkv, check_scale
from .config import RRConfig
from .pipeline import resolve, run_attention
from .stats import RRStats


def _check_cu_seqlens(name: str, cu: Any, total: int, device: torch.device) -> list[int]:
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be an int32 torch.Tensor [N+1], got {type(cu).__name__}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor [N+1] with N >= 1 sequences, got shape {tuple(cu.shape)}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 (or int64), got {cu.dtype}")
    if cu.device != device:
        raise ValueError(f"{name} must be on the device of q ({device}), got {cu.device}")
    bounds = cu.tolist()
    if bounds[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {bounds[0]}")
    if bounds[-1] != total:
        raise ValueError(f"{name}[-1] must equal the number of packed tokens ({total}), got {bounds[-1]}")
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    if min(lengths) < 1:
        raise ValueError(f"{name} must be strictly increasing (empty sequences are not allowed), got {bounds}")
    return bounds


def rr_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    cfg: RRConfig | None = None,
    *,
    scale: float | None = None,
    layer: int | None = None,
    return_stats: bool = False,
    check_inputs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, RRStats]:
    """RRAttention on packed sequences of different lengths.

    Sequence ``s`` is ``q[cu_seqlens_q[s]:cu_seqlens_q[s+1]]`` against
    ``k, v[cu_seqlens_k[s]:cu_seqlens_k[s+1]]``; its queries are the last positions of its keys.
    The result equals :func:`rrattention.rr_attention` on each sequence alone; no token of one
    sequence (nor padding removed to pack them) influences another's selection or output.

    Args:
        q: ``[Tq, Hq, D]``; k, v: ``[Tk, Hkv, D]``; fp16/bf16/fp32, ``Hq % Hkv == 0``.
        cu_seqlens_q, cu_seqlens_k: int32 ``[N+1]``, on q's device, cumulative lengths from 0;
            every sequence has ``1 ≤ Lq ≤ Lk``.
        max_seqlen_q, max_seqlen_k: upper bounds on the lengths (as in flash-attn).
        cfg, scale, layer, return_stats, check_inputs: as in :func:`rrattention.rr_attention`.

    Returns:
        ``out`` ``[Tq, Hq, D]`` in ``q.dtype``; with ``return_stats``, ``(out, stats)`` with one
        stats row per sequence (grids padded to the longest).
    """
    check_qkv(q, k, v, packed=True)
    bounds_q = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    bounds_k = _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
    if len(bounds_q) != len(bounds_k):
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, "
            f"got {len(bounds_q) - 1} and {len(bounds_k) - 1}"
        )
    spans = [(qa, qb, ka, kb) for qa, qb, ka, kb in zip(bounds_q, bounds_q[1:], bounds_k, bounds_k[1:])]
    for s, (qa, qb, ka, kb) in enumerate(spans):
        if qb - qa > kb - ka:
            raise ValueError(f"sequence {s} has more queries ({qb - qa}) than keys ({kb - ka}); need Lq <= Lk")
    for name, bound, lengths in (
        ("max_seqlen_q", max_seqlen_q, [qb - qa for qa, qb, _, _ in spans]),
        ("max_seqlen_k", max_seqlen_k, [kb - ka for _, _, ka, kb in spans]),
    ):
        if check_length(name, bound) < max(lengths):
            raise ValueError(f"{name} must be >= the longest sequence ({max(lengths)}), got {bound}")
    cfg, layer = resolve(cfg, layer)
    scale = check_scale(scale, q.shape[-1])
    if check_inputs:
        check_finite(q=q, k=k, v=v)

    out = torch.empty_like(q)
    masks, reasons = [], []
    for qa, qb, ka, kb in spans:
        q1, k1, v1 = (x.transpose(0, 1).unsqueeze(0) for x in (q[qa:qb], k[ka:kb], v[ka:kb]))
        shape = check_qkv(q1, k1, v1)
        o1, mask, reason = run_attention(q1, k1, v1, cfg, layer, scale, shape)
        out[qa:qb] = o1[0].transpose(0, 1)
        masks.append(mask)
        reasons.append(reason)
    if not return_stats:
        return out
    return out, _varlen_stats(spans, masks, reasons, cfg.block_size, q.shape[1], q.device)


def _varlen_stats(spans, masks, reasons, block_size: int, heads: int, device) -> RRStats:
    grid = lambda length: -(-length // block_size)  # noqa: E731
    n_qblocks = max(grid(qb - qa) for qa, qb, _, _ in spans)
    n_kblocks = max(grid(kb - ka) for _, _, ka, kb in spans)
    block_mask = torch.zeros(len(spans), heads, n_qblocks, n_kblocks, dtype=torch.bool, device=device)
    visible_mask = torch.zeros_like(block_mask)
    for s, ((qa, qb, ka, kb), mask) in enumerate(zip(spans, masks)):
        visible = reference.visible_blocks(qb - qa, kb - ka, block_size, device)
        rows, cols = visible.shape
        visible_mask[s, :, :rows, :cols] = visible
        block_mask[s, :, :rows, :cols] = visible if mask is None else mask[0]
    return RRStats.from_masks(block_mask, visible_mask, reasons)
