"""What one attention call selected, and its sparsity as spec §6 counts it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch


@dataclass(frozen=True)
class RRStats:
    """Selection made by one ``rr_attention`` / ``rr_attention_varlen`` call.

    Attributes:
        block_mask: bool ``[B, Hq, nbq, nbk]``, the blocks attention computed. For the varlen form
            ``B`` is the number of sequences and the grid is padded (with False) to the longest.
            A dense call reports its causally visible blocks.
        visible_mask: bool, same shape: the causally visible blocks of each sequence.
        sparsity: ``1 − selected / visible`` counted over every (sequence, head, query block).
        dense_reasons: per sequence, why it ran dense attention (None where it ran sparse).
        backends: which backend ran each stage (``{"attention": "sdpa"}`` for a dense call).
        timings_ms: per stage, when the call was asked to time them (summed over sequences).
    """

    block_mask: torch.Tensor
    visible_mask: torch.Tensor
    sparsity: float
    dense_reasons: tuple[str | None, ...]
    backends: Mapping[str, str] = field(default_factory=dict)
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_masks(cls, block_mask, visible_mask, dense_reasons, backends=None, timings_ms=None) -> "RRStats":
        selected = int((block_mask & visible_mask).sum())
        visible = int(visible_mask.sum())
        return cls(block_mask, visible_mask, 1.0 - selected / visible, tuple(dense_reasons), dict(backends or {}),
                   dict(timings_ms or {}))

    @classmethod
    def dense(cls, visible_mask, dense_reasons, backends=None, timings_ms=None) -> "RRStats":
        """A call that ran dense attention everywhere: sparsity 0, known without reading the GPU."""
        return cls(visible_mask, visible_mask, 0.0, tuple(dense_reasons), dict(backends or {}), dict(timings_ms or {}))

    @property
    def is_dense(self) -> bool:
        """Every sequence ran dense attention."""
        return all(reason is not None for reason in self.dense_reasons)

    @property
    def sparsity_per_head(self) -> torch.Tensor:
        """fp32 ``[B, Hq]``: the sparsity of each (sequence, head)."""
        if self.is_dense:
            return torch.zeros(self.block_mask.shape[:2], device=self.block_mask.device)
        selected = (self.block_mask & self.visible_mask).sum(dim=(-2, -1)).float()
        return 1.0 - selected / self.visible_mask.sum(dim=(-2, -1)).float()
