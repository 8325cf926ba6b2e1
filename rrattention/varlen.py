"""Packed variable-length form (flash-attn convention): every sequence runs as if alone with batch 1."""

from __future__ import annotations

from typing import Any

import torch

from . import backends
from ._checks import (check_config, check_finite, check_head_start, check_layer, check_length, check_qkv,
                      check_scale)
from .config import AttentionConfig
from .plan import AttentionPlan
from .stats import RRStats


def _check_cu_seqlens_tensor(name: str, cu: Any, device: torch.device) -> None:
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be an int32 torch.Tensor [N+1], got {type(cu).__name__}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor [N+1] with N >= 1 sequences, got shape {tuple(cu.shape)}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 (or int64), got {cu.dtype}")
    if cu.device != device:
        raise ValueError(f"{name} must be on the device of q ({device}), got {cu.device}")


def _check_cu_seqlens_values(name: str, bounds: list[int], total: int) -> None:
    if bounds[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {bounds[0]}")
    if bounds[-1] != total:
        raise ValueError(f"{name}[-1] must equal the number of packed tokens ({total}), got {bounds[-1]}")
    if min(b - a for a, b in zip(bounds, bounds[1:])) < 1:
        raise ValueError(f"{name} must be strictly increasing (empty sequences are not allowed), got {bounds}")


def _spans(cu_seqlens_q, cu_seqlens_k, q_total: int, k_total: int, max_seqlen_q: int, max_seqlen_k: int):
    """Validated ``(q_start, q_end, k_start, k_end)`` per sequence (reads the offsets on the host)."""
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    _check_cu_seqlens_values("cu_seqlens_q", bounds_q, q_total)
    _check_cu_seqlens_values("cu_seqlens_k", bounds_k, k_total)
    spans = list(zip(bounds_q, bounds_q[1:], bounds_k, bounds_k[1:]))
    for s, (qa, qb, ka, kb) in enumerate(spans):
        if qb - qa > kb - ka:
            raise ValueError(f"sequence {s} has more queries ({qb - qa}) than keys ({kb - ka}); need Lq <= Lk")
    for name, bound, longest in (
        ("max_seqlen_q", max_seqlen_q, max(qb - qa for qa, qb, _, _ in spans)),
        ("max_seqlen_k", max_seqlen_k, max(kb - ka for _, _, ka, kb in spans)),
    ):
        if bound < longest:
            raise ValueError(f"{name} must be >= the longest sequence ({longest}), got {bound}")
    return tuple(spans)


def rr_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    cfg: AttentionConfig | None = None,
    *,
    scale: float | None = None,
    layer: int | None = None,
    return_stats: bool = False,
    check_inputs: bool = False,
    backend: str | None = None,
    time_stages: bool = False,
    head_start: int = 0,
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
        cfg, scale, layer, return_stats, check_inputs, backend, time_stages, head_start: as in
            :func:`rrattention.rr_attention`.
            With the Triton backend all sequences run in one launch per stage and the offsets are
            trusted (validated only with ``check_inputs`` or ``return_stats``, which synchronise).

    Returns:
        ``out`` ``[Tq, Hq, D]`` in ``q.dtype``; with ``return_stats``, ``(out, stats)`` with one
        stats row per sequence (grids padded to the longest).
    """
    shape = check_qkv(q, k, v, packed=True)
    _check_cu_seqlens_tensor("cu_seqlens_q", cu_seqlens_q, q.device)
    _check_cu_seqlens_tensor("cu_seqlens_k", cu_seqlens_k, q.device)
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, "
            f"got {cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1}"
        )
    max_seqlen_q, max_seqlen_k = check_length("max_seqlen_q", max_seqlen_q), check_length("max_seqlen_k", max_seqlen_k)
    cfg, layer = check_config(cfg, any_method=True), check_layer(layer)
    head_start = check_head_start(head_start)
    scale = check_scale(scale, shape.head_dim)
    if check_inputs:
        check_finite(q=q, k=k, v=v)
    if backend is not None:
        backends.get(backend)
    # Offsets are trusted as in flash-attn (reading them back would synchronise): checked on request,
    # and read where they are needed anyway (statistics, a packed batch planned per sequence).
    def plan_for(spans):
        packed = backends.Packed(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, spans)
        return AttentionPlan(cfg, q_heads=shape.q_heads, kv_heads=shape.kv_heads, head_dim=shape.head_dim,
                             dtype=q.dtype, device=q.device, scale=scale, packed=packed, backend=backend,
                             time_stages=time_stages, head_start=head_start)

    def spans():
        return _spans(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k)

    plan = plan_for(spans() if check_inputs or return_stats else None)
    if plan.packed.spans is None and plan.layer_plan(layer).ops is None:
        plan = plan_for(spans())
    run = plan.run(q, k, v, layer)
    return (run.out, plan.stats(run)) if return_stats else run.out
