"""Public functions on padded ``[B, H, L, D]`` tensors (HF transformers layout).

Each validates its arguments, then runs the stage of ``spec.md`` it names on the backend dispatch
chooses; :func:`rr_attention` builds an :class:`~rrattention.plan.AttentionPlan` for the call and
runs it. The packed variable-length form is in :mod:`rrattention.varlen`.
"""

from __future__ import annotations

import torch

from . import backends, reference
from ._checks import (
    check_block_grid,
    check_config,
    check_finite,
    check_head_start,
    check_layer,
    check_length,
    check_qkv,
    check_scale,
)
from .config import AttentionConfig, RRConfig
from .methods import rr
from .methods.base import problem_of
from .plan import AttentionPlan
from .stats import RRStats


def _resolve(cfg, layer, *, any_method: bool = False) -> tuple[AttentionConfig, int | None]:
    cfg, layer = check_config(cfg, any_method=any_method), check_layer(layer)
    return cfg.layer_config(layer), layer


def estimate_block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    cfg: RRConfig | None = None,
    *,
    layer: int | None = None,
    scale: float | None = None,
    backend: str | None = None,
    head_start: int = 0,
) -> torch.Tensor:
    """Block scores of RRAttention's estimator (spec §2–§3).

    Args:
        q: ``[B, Hq, Lq, D]``, fp16/bf16/fp32.
        k: ``[B, Hkv, Lk, D]``, same dtype and device, ``Hq % Hkv == 0``, ``Lq ≤ Lk``.
        cfg: settings (default ``RRConfig()``); ``stride``, ``block_size``, ``head_shift``,
            ``exact_stride_causal`` and ``seed`` are used.
        layer: layer index: applies ``cfg.layer_overrides[layer]`` and seeds ``head_shift="random"``.
        scale: logit scale, default ``1/√D``.
        backend: force a backend (see :mod:`rrattention.backends`); default: the first capable.
        head_start: global index of ``q``'s head 0 when ``q`` holds a slice of the model's heads
            (as in :func:`rr_attention`).

    Returns:
        fp32 ``[B, Hq, ceil(Lq/Bk), ceil(Lk/Bk)]``; each row holds the softmax mass of the sampled
        queries of that query block (``Bk/S`` per full block).
    """
    shape = check_qkv(q, k)
    cfg, layer = _resolve(cfg, layer)
    estimator, _ = rr.METHOD.prepare(cfg, layer, check_scale(scale, shape.head_dim),
                                     head_start=check_head_start(head_start))
    return backends.choose("estimate", problem_of(q, k, cfg), backend).rr_scores(q, k, estimator)


def select_blocks(
    scores: torch.Tensor,
    cfg: RRConfig | None = None,
    *,
    q_len: int,
    k_len: int,
    layer: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Top-τ block mask from block scores (spec §4): ranked selection, causal AND, forced blocks.

    Args:
        scores: ``[B, Hq, ceil(q_len/Bk), ceil(k_len/Bk)]``, non-negative.
        cfg: settings (default ``RRConfig()``); ``block_size``, ``tau``, ``selector`` and the
            ``force_*`` / ``dense_last_query_block`` flags are used.
        q_len, k_len: ``Lq ≤ Lk``; queries are the last ``Lq`` of the ``Lk`` positions.
        layer: applies ``cfg.layer_overrides[layer]``.
        backend: force a backend; default: the first capable.

    Returns:
        bool ``[B, Hq, ceil(q_len/Bk), ceil(k_len/Bk)]``.
    """
    cfg, layer = _resolve(cfg, layer)
    q_len, k_len = check_length("q_len", q_len), check_length("k_len", k_len)
    if q_len > k_len:
        raise ValueError(f"q_len must be <= k_len, got q_len={q_len} > k_len={k_len}")
    check_block_grid("scores", scores, q_len, k_len, cfg.block_size)
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a floating-point tensor, got {scores.dtype}")
    _, selection = rr.METHOD.prepare(cfg, layer, 1.0)
    chosen = backends.choose("select", backends.Problem(scores.device, cfg.block_size), backend)
    return chosen.select(scores.float(), selection, q_len, k_len).block_mask


def to_kv_index(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact form of a block mask for kernels (spec §4 outputs).

    Args:
        block_mask: bool ``[B, Hq, nbq, nbk]``.

    Returns:
        ``(kv_count, kv_index)``: int32 ``[B, Hq, nbq]`` and int32 ``[B, Hq, nbq, nbk]``; the first
        ``kv_count`` entries of each row are the selected key blocks in ascending order, the rest
        the unselected ones in ascending order (FlexAttention's ``from_kv_blocks`` layout).
    """
    if not isinstance(block_mask, torch.Tensor):
        raise TypeError(f"block_mask must be a torch.Tensor, got {type(block_mask).__name__}")
    if block_mask.dim() != 4 or block_mask.numel() == 0:
        raise ValueError(f"block_mask must be a non-empty 4-D tensor [B, Hq, nbq, nbk], got shape {tuple(block_mask.shape)}")
    if block_mask.dtype != torch.bool:
        raise ValueError(f"block_mask must be a bool tensor, got {block_mask.dtype}")
    return reference.to_kv_index(block_mask)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    scale: float | None = None,
    return_lse: bool = False,
    *,
    block_size: int = 128,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal attention restricted to the selected blocks (spec §5).

    Each query attends, with an exact softmax, to the keys ``≤ query + δ`` (bottom-right causal,
    ``δ = Lk − Lq``) inside its row's selected blocks. A query with no such key outputs zeros and
    LSE ``−inf`` (only possible when the diagonal block is not selected).

    Args:
        q: ``[B, Hq, Lq, D]``.
        k, v: ``[B, Hkv, Lk, D]``, ``Hq % Hkv == 0`` (GQA without repeating K/V), ``Lq ≤ Lk``.
        block_mask: bool ``[B, Hq, ceil(Lq/block_size), ceil(Lk/block_size)]``; size-1 batch or
            head dims broadcast.
        scale: softmax scale, default ``1/√D``.
        return_lse: also return the log-sum-exp.
        block_size: ``Bk``, the side of a mask block in tokens.
        backend: force a backend (``triton``, ``flex``, ``reference``); default: the first capable.

    Returns:
        ``out`` ``[B, Hq, Lq, D]`` in ``q.dtype``; with ``return_lse``, ``(out, lse)`` where ``lse``
        is fp32 ``[B, Hq, Lq]``.
    """
    shape = check_qkv(q, k, v)
    block_size = check_length("block_size", block_size)
    check_block_grid(
        "block_mask", block_mask, shape.q_len, shape.k_len, block_size,
        batch=shape.batch, heads=shape.q_heads, broadcast=True,
    )
    if block_mask.dtype != torch.bool:
        raise ValueError(f"block_mask must be a bool tensor, got {block_mask.dtype}")
    if block_mask.device != q.device:
        raise ValueError(f"block_mask must be on the device of q ({q.device}), got {block_mask.device}")
    prob = backends.Problem(q.device, block_size, q.dtype, shape.head_dim, dense_flops=backends.causal_flops(
        shape.batch, shape.q_heads, shape.q_len, shape.k_len, shape.head_dim))
    chosen = backends.choose("attention", prob, backend)
    out, lse = chosen.attend(q, k, v, backends.Selection(block_mask), block_size=block_size,
                             scale=check_scale(scale, shape.head_dim))
    return (out, lse) if return_lse else out


def rr_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
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
    """RRAttention: estimate (§2–§3), select (§4), block-sparse attention (§5), with the policies of §6.

    Runs dense causal attention instead when ``layer`` is in ``cfg.dense_layers``, when
    ``Lk < cfg.min_sparse_len`` (default: the measured crossover for this head dim and these
    heads, :mod:`rrattention.crossover`), or for a single query (``Lq == 1``, decode).

    Args:
        q: ``[B, Hq, Lq, D]``, fp16/bf16/fp32.
        k, v: ``[B, Hkv, Lk, D]``, same dtype and device, ``Hq % Hkv == 0``, ``Lq ≤ Lk``
            (``Lq < Lk`` is chunked prefill: queries are the last ``Lq`` positions).
        cfg: settings, default ``RRConfig()``; the config of another method of
            :mod:`rrattention.methods` (e.g. ``XAttentionConfig()``) runs that method's estimator
            with the same policies and attention kernel.
        scale: softmax scale for estimation and attention, default ``1/√D``.
        layer: layer index: applies ``cfg.layer_overrides`` and ``cfg.dense_layers``, seeds
            ``head_shift="random"``.
        return_stats: also return :class:`RRStats` (costs a host sync).
        check_inputs: raise ValueError if q, k or v hold NaN/inf (costs a host sync).
        backend: force a backend for the stages it implements (others: the first capable);
            ``rrattention.backends.explain`` says why a backend declines.
        time_stages: record each stage's time in ``stats.timings_ms`` (synchronises the GPU).
        head_start: the global index of ``q``'s head 0 when the call holds a slice of the model's
            query heads (tensor parallelism: rank ``p`` of ``tp`` passes ``p · Hq``, its local
            ``Hq``); the round-robin offsets of spec §2 use the global index ``head_start + h``, so
            the ranks' selections together equal one device's. The slice must keep the model's
            ``G = Hq / Hkv`` (KV heads sharded with their query heads) for ``group_round_robin``.

    Returns:
        ``out`` ``[B, Hq, Lq, D]`` in ``q.dtype``; with ``return_stats``, ``(out, stats)``.
    """
    shape = check_qkv(q, k, v)
    cfg, layer = check_config(cfg, any_method=True), check_layer(layer)
    head_start = check_head_start(head_start)
    scale = check_scale(scale, shape.head_dim)
    if check_inputs:
        check_finite(q=q, k=k, v=v)
    plan = AttentionPlan(cfg, q_heads=shape.q_heads, kv_heads=shape.kv_heads, head_dim=shape.head_dim, dtype=q.dtype,
                         device=q.device, scale=scale, batch=shape.batch, q_len=shape.q_len, k_len=shape.k_len,
                         backend=backend, time_stages=time_stages, head_start=head_start)
    run = plan.run(q, k, v, layer)
    return (run.out, plan.stats(run)) if return_stats else run.out
