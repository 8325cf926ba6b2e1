"""What one attention call selected, and its sparsity as spec §6 counts it.

The one statistics builder of the package: :func:`padded_stats` and :func:`packed_stats` serve
every entry point (public functions, plans, framework hooks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from . import reference


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


def padded_stats(block_mask: torch.Tensor | None, batch: int, heads: int, q_len: int, k_len: int, block_size: int,
                 dense_reason: str | None, backends: Mapping[str, str], timings_ms: Mapping[str, float],
                 device) -> RRStats:
    """Statistics of a padded call; ``block_mask`` None: it ran dense (its visible blocks are
    reported, built on the CPU: nothing on the device selected them)."""
    if block_mask is None:
        visible = reference.visible_blocks(q_len, k_len, block_size, "cpu").expand(batch, heads, -1, -1)
        return RRStats.dense(visible, [dense_reason] * batch, backends, timings_ms)
    visible = reference.visible_blocks(q_len, k_len, block_size, device).expand(batch, heads, -1, -1)
    return RRStats.from_masks(block_mask, visible, [dense_reason] * batch, backends, timings_ms)


def packed_stats(spans: Sequence[tuple[int, int, int, int]], masks: Sequence[torch.Tensor | None],
                 dense_reasons: Sequence[str | None], block_size: int, heads: int, backends: Mapping[str, str],
                 timings_ms: Mapping[str, float], device) -> RRStats:
    """Statistics of a packed call: one row per sequence, grids padded (False) to the longest.

    ``masks[s]`` is sequence ``s``'s bool ``[1, Hq, ≥nbq_s, ≥nbk_s]`` selection, or None where it ran dense.
    """
    grid = lambda length: -(-length // block_size)  # noqa: E731
    n_qblocks = max(grid(qb - qa) for qa, qb, _, _ in spans)
    n_kblocks = max(grid(kb - ka) for _, _, ka, kb in spans)
    block_mask = torch.zeros(len(spans), heads, n_qblocks, n_kblocks, dtype=torch.bool, device=device)
    visible_mask = torch.zeros_like(block_mask)
    for s, ((qa, qb, ka, kb), mask) in enumerate(zip(spans, masks)):
        visible = reference.visible_blocks(qb - qa, kb - ka, block_size, device)
        rows, cols = visible.shape
        visible_mask[s, :, :rows, :cols] = visible
        block_mask[s, :, :rows, :cols] = visible if mask is None else mask[0, :, :rows, :cols]
    return RRStats.from_masks(block_mask, visible_mask, dense_reasons, backends, timings_ms)
