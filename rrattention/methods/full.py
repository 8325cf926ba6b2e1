"""``full``: dense causal attention (the baseline every table compares to; sparsity 0)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from ..config import AttentionConfig
from ..reference import visible_blocks
from .base import MaskMethod


@dataclass(frozen=True)
class FullConfig(AttentionConfig):
    """Dense attention. ``block_size`` only sets the grid its (all-visible) mask is reported on."""

    block_size: int = 128
    min_sparse_len: int = 0
    dense_layers: tuple[int, ...] = ()
    layer_overrides: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)

    method: ClassVar[str] = "full"
    __hash__ = AttentionConfig.__hash__

    def __post_init__(self) -> None:
        self._validate_common()


def estimate(q: torch.Tensor, k: torch.Tensor, cfg: FullConfig, layer=None, *, scale=None) -> torch.Tensor:
    """Every causally visible block."""
    return visible_blocks(q.shape[2], k.shape[2], cfg.block_size, q.device).expand(q.shape[0], q.shape[1], -1, -1)


METHOD = MaskMethod("full", FullConfig, estimate, "dense causal attention (SDPA); sparsity 0")
