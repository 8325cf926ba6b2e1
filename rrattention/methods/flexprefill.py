"""``flexprefill``: FlexPrefill (Lai et al., ICLR 2025), per head either vertical-slash or query-aware.

1. The last query block attends exactly to all keys: ``vertical`` (mean over those queries, per
   key) and ``slash`` (mean mass per diagonal offset).
2. Pattern: the block-pooled estimate ``softmax(mean(q_last) · K̄_blockᵀ)`` is compared with the
   block-pooled ``vertical`` by the square-root Jensen–Shannon distance; below ``tau`` the head
   is *query-aware*.
3. Budgets: the number of tokens holding ``gamma`` of the vertical (slash) mass, as blocks
   ``count // Bk + 1``, clamped to ``[min_budget, max_budget]``; query-aware heads use
   ``min_budget``. Vertical-slash heads keep the top vertical key blocks and top block
   diagonals (block 0 and the main diagonal always).
4. Query-aware heads add, from block-mean Q × block-mean K attention (causal, row softmax), the
   highest-scoring blocks of the whole grid until ``gamma · nbq`` of its mass (a global budget).

Vectorised over batch and heads; budgets are tensors, so there is no host synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from ..config import AttentionConfig, _check_fraction, _check_int
from ..reference import top_mass, visible_blocks
from .base import (
    MaskMethod,
    block_means,
    cover_count,
    diagonal_blocks,
    diagonal_sums,
    last_queries_attention,
    rank_mask,
    sink_and_diagonal,
)


@dataclass(frozen=True)
class FlexPrefillConfig(AttentionConfig):
    """Defaults of FlexPrefill's example configuration (γ = 0.9, τ = 0.1), budgets in blocks."""

    block_size: int = 128
    gamma: float = 0.9
    tau: float = 0.1
    min_budget: int = 1
    max_budget: int | None = None
    min_sparse_len: int | None = None  # None: the measured dense/sparse crossover (spec §6)
    dense_layers: tuple[int, ...] = ()
    layer_overrides: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)

    method: ClassVar[str] = "flexprefill"
    __hash__ = AttentionConfig.__hash__

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma", _check_fraction("gamma", self.gamma))
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"tau (Jensen-Shannon distance threshold) must be a float in [0, 1], got {self.tau!r}")
        _check_int("min_budget", self.min_budget, minimum=1)
        if self.max_budget is not None and _check_int("max_budget", self.max_budget, minimum=1) < self.min_budget:
            raise ValueError(f"max_budget must be >= min_budget ({self.min_budget}), got {self.max_budget}")
        self._validate_common()


def js_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Square root of the Jensen–Shannon divergence (natural log) of two distributions on the last dim."""
    m = 0.5 * (p + q)
    kl = lambda a, b: torch.where(a > 0, a * (torch.log(a.clamp(min=1e-30)) - torch.log(b.clamp(min=1e-30))), 0.0).sum(-1)  # noqa: E731
    return torch.sqrt((0.5 * kl(p, m) + 0.5 * kl(q, m)).clamp(min=0.0))


def estimate(q: torch.Tensor, k: torch.Tensor, cfg: FlexPrefillConfig, layer=None, *, scale=None) -> torch.Tensor:
    q_len, k_len = q.shape[2], k.shape[2]
    batch, q_heads = q.shape[:2]
    group = q_heads // k.shape[1]
    bk = cfg.block_size
    n_qblocks, n_kblocks = -(-q_len // bk), -(-k_len // bk)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    visible = visible_blocks(q_len, k_len, bk, q.device)

    attn = last_queries_attention(q, k, bk, scale)  # [B, H, n, Lk]
    vertical = attn.mean(2)
    slash = diagonal_sums(attn) / attn.shape[2]
    pad = n_kblocks * bk - k_len
    pooled_vertical = torch.nn.functional.pad(vertical, (0, pad)).view(batch, q_heads, n_kblocks, bk).sum(-1)
    pooled_slash = torch.nn.functional.pad(slash, (0, pad)).view(batch, q_heads, n_kblocks, bk).sum(-1)  # by block diagonal

    key_means = block_means(k, bk).repeat_interleave(group, 1)  # [B, H, nbk, D]
    last_q_mean = q[:, :, -attn.shape[2]:].float().mean(2)
    estimate_last = torch.softmax((key_means @ last_q_mean[..., None]).squeeze(-1) * scale, dim=-1)
    query_aware = js_distance(estimate_last, pooled_vertical) < cfg.tau  # [B, H]

    def budget(mass):
        blocks = cover_count(mass, cfg.gamma) // bk + 1
        blocks = blocks.clamp(min=cfg.min_budget, max=cfg.max_budget if cfg.max_budget is not None else n_kblocks)
        return torch.where(query_aware, cfg.min_budget, blocks)

    vertical_blocks = rank_mask(pooled_vertical, budget(vertical))
    vertical_blocks[..., 0] = True
    slash_diagonals = rank_mask(pooled_slash, budget(slash))
    slash_diagonals[..., 0] = True
    offset = diagonal_blocks(q_len, k_len, bk, q.device)[:, None] - torch.arange(n_kblocks, device=q.device)[None, :]
    on_slash = slash_diagonals.gather(-1, offset.clamp(min=0).reshape(1, 1, -1).expand(batch, q_heads, -1))
    mask = vertical_blocks[:, :, None, :] | (on_slash.view(batch, q_heads, n_qblocks, n_kblocks) & (offset >= 0))

    # query-aware heads: block-mean Q × block-mean K, covered to gamma of the grid's total mass
    logits = (block_means(q, bk) @ key_means.transpose(-1, -2)) * scale
    block_attn = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1).flatten(2)
    extra = top_mass(block_attn, block_attn.sum(-1), cfg.gamma).view(batch, q_heads, n_qblocks, n_kblocks)
    mask = mask | (extra & query_aware[..., None, None])
    return (mask & visible) | sink_and_diagonal(q_len, k_len, bk, q.device)


METHOD = MaskMethod("flexprefill", FlexPrefillConfig, estimate,
                "last-block representative attention; per head vertical-slash or query-aware by JS distance (γ=0.9, τ=0.1)")
