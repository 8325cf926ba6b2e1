"""The steps every entry point shares: resolve the per-layer config, apply the dense policies of
spec §6, and run estimate → select → attend on one padded batch of validated tensors."""

from __future__ import annotations

from typing import Any

import torch

from . import reference
from ._checks import AttentionShape, check_config, check_layer
from .config import RRConfig


def dense_reason(cfg: RRConfig, layer: int | None, q_len: int, k_len: int) -> str | None:
    """Why a call must run dense attention under the policies of spec §6, or None if it runs sparse."""
    if cfg.is_dense_layer(layer):
        return f"layer {layer} is in dense_layers"
    if q_len == 1:
        return "single query (Lq == 1, decode)"
    if k_len < cfg.min_sparse_len:
        return f"Lk={k_len} < min_sparse_len={cfg.min_sparse_len}"
    return None


def resolve(cfg: Any, layer: Any) -> tuple[RRConfig, int | None]:
    cfg, layer = check_config(cfg), check_layer(layer)
    # for_layer drops the pending overrides but keeps dense_layers, so dense_reason still sees them.
    return (cfg if layer is None else cfg.for_layer(layer)), layer


def estimate(q, k, cfg: RRConfig, layer: int | None, scale: float, shape: AttentionShape) -> torch.Tensor:
    offsets = reference.head_offsets(shape.q_heads, shape.kv_heads, cfg.stride, cfg.head_shift, layer=layer or 0, seed=cfg.seed)
    return reference.block_scores(
        q, k, stride=cfg.stride, block_size=cfg.block_size, offsets=offsets,
        exact_stride_causal=cfg.exact_stride_causal, scale=scale,
    )


def select(scores: torch.Tensor, cfg: RRConfig, q_len: int, k_len: int) -> torch.Tensor:
    return reference.select_blocks(
        scores, q_len=q_len, k_len=k_len, block_size=cfg.block_size, tau=cfg.tau, selector=cfg.selector,
        force_sink=cfg.force_sink, force_diagonal=cfg.force_diagonal, dense_last_query_block=cfg.dense_last_query_block,
    )


def run_attention(q, k, v, cfg: RRConfig, layer: int | None, scale: float, shape: AttentionShape):
    """Returns ``(out, block_mask or None if dense, dense reason or None)``."""
    reason = dense_reason(cfg, layer, shape.q_len, shape.k_len)
    if reason is not None:
        return reference.dense_causal_attention(q, k, v, scale=scale), None, reason
    scores = estimate(q, k, cfg, layer, scale, shape)
    block_mask = select(scores, cfg, shape.q_len, shape.k_len)
    out, _ = reference.block_sparse_attention(q, k, v, block_mask, block_size=cfg.block_size, scale=scale)
    return out, block_mask, None
