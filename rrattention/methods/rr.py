"""``rrattention``: the paper's method (spec §2–§4), configured by :class:`rrattention.RRConfig`."""

from __future__ import annotations

import dataclasses

from ..backends import EstimatorSettings, Packed, Selection, SelectionSettings, StageBackends
from ..config import RRConfig
from ..timing import stage
from .base import Method


class RRAttention(Method):
    name = "rrattention"
    config_class = RRConfig
    description = "per-head round-robin sampled query per stride vs stride-mean keys, Top-τ (S=8, τ=0.95)"
    stages = ("estimate", "select")
    packed = True

    def prepare(self, cfg: RRConfig, layer, scale: float, per_sequence_min_len: int | None = None, *,
                head_start: int = 0):
        estimator = EstimatorSettings(stride=cfg.stride, block_size=cfg.block_size, head_shift=cfg.head_shift,
                                      layer=layer or 0, seed=cfg.seed, exact_stride_causal=cfg.exact_stride_causal,
                                      scale=scale, precision=cfg.estimator_precision, head_start=head_start)
        selection = SelectionSettings(block_size=cfg.block_size, tau=cfg.tau, selector=cfg.selector,
                                      force_sink=cfg.force_sink, force_diagonal=cfg.force_diagonal,
                                      dense_last_query_block=cfg.dense_last_query_block,
                                      min_sparse_len=per_sequence_min_len or 0,
                                      single_query_dense=per_sequence_min_len is not None)
        return estimator, selection

    def graph_key(self, prepared):
        # The layer index reaches the kernels only through the random head shift's hash (spec §2).
        estimator, selection = prepared
        return (estimator if estimator.head_shift == "random" else dataclasses.replace(estimator, layer=0)), selection

    def select(self, ops: StageBackends, q, k, prepared, packed: Packed | None = None, timer=None) -> Selection:
        """Round-robin sampled stride scores (§2–§3) → Top-τ selection (§4)."""
        estimator, selection = prepared
        with stage(timer, "estimate"):
            scores = ops.estimate.rr_scores(q, k, estimator, packed)
        with stage(timer, "select"):
            return ops.select.select(scores, selection, q.shape[2] if packed is None else 0,
                                     k.shape[2] if packed is None else 0, packed)


METHOD = RRAttention()
