"""``xattention``: XAttention's antidiagonal stride scoring (Xu et al., ICML 2025).

For query stride ``m`` and key stride ``n`` the score is the mean of the ``S`` antidiagonal
products ``Σ_j q_{mS+S−1−j} · k_{nS+j} / (S·√D)``; a softmax over the key strides visible to the
stride's last query, block sums, then the ``find_blocks`` selection: the forced blocks' mass is
counted first (``selector="forced_first"``), ``keep_sink`` forces block 0 and ``keep_recent``
the diagonal blocks (not a dense last row). Every query head uses its KV head's keys (GQA without
repeating them); logits and softmax are fp32 (the original stores logits in bf16). The plain-PyTorch
estimator is :func:`rrattention.reference.antidiagonal_block_scores`; the Triton backend runs it
as a mode of the fused estimator kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from ..backends import Selection, SelectionSettings, StageBackends
from ..config import AttentionConfig, _check_bool, _check_fraction, _check_int
from ..timing import stage
from .base import Method


@dataclass(frozen=True)
class XAttentionConfig(AttentionConfig):
    stride: int = 8
    block_size: int = 128
    tau: float = 0.9
    keep_sink: bool = True
    keep_recent: bool = True
    min_sparse_len: int | None = None  # None: the measured dense/sparse crossover (spec §6)
    dense_layers: tuple[int, ...] = ()
    layer_overrides: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)

    method: ClassVar[str] = "xattention"
    __hash__ = AttentionConfig.__hash__

    def __post_init__(self) -> None:
        _check_int("stride", self.stride, minimum=1)
        _check_int("block_size", self.block_size, minimum=1)
        if self.block_size % self.stride != 0:
            raise ValueError(f"block_size must be a multiple of stride, got block_size={self.block_size}, stride={self.stride}")
        object.__setattr__(self, "tau", _check_fraction("tau", self.tau))
        _check_bool("keep_sink", self.keep_sink)
        _check_bool("keep_recent", self.keep_recent)
        self._validate_common()


class XAttention(Method):
    name = "xattention"
    config_class = XAttentionConfig
    description = "antidiagonal stride scoring, forced blocks counted first, Top-τ (S=8, τ=0.9)"
    stages = ("estimate", "select")

    def prepare(self, cfg: XAttentionConfig, layer, scale: float, per_sequence_min_len=None, *, head_start: int = 0):
        # find_blocks: the forced blocks' mass first, then the rest while below τ·T; AND causal.
        selection = SelectionSettings(block_size=cfg.block_size, tau=cfg.tau, selector="forced_first",
                                      force_sink=cfg.keep_sink, force_diagonal=cfg.keep_recent,
                                      dense_last_query_block=False)
        return cfg.stride, cfg.block_size, scale, selection

    def select(self, ops: StageBackends, q, k, prepared, packed=None, timer=None) -> Selection:
        stride, block_size, scale, selection = prepared
        with stage(timer, "estimate"):
            scores = ops.estimate.antidiagonal_scores(q, k, stride=stride, block_size=block_size, scale=scale)
        with stage(timer, "select"):
            return ops.select.select(scores, selection, q.shape[2], k.shape[2])


METHOD = XAttention()
