"""``vertical_slash``: MInference's online vertical + slash pattern, at block granularity.

The last ``last_q`` queries attend (exactly) to all keys; the ``vertical_size`` keys with the most
mass (columns) and the ``slash_size`` diagonal offsets with the most mass (slashes) are kept, with
fixed budgets per head. A block is selected if it holds a kept column or a kept diagonal passes
through it (MInference's own kernel works at token level inside such blocks; here the shared
block-sparse kernel computes the whole block). Sink and diagonal blocks are always kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from ..config import AttentionConfig, _check_int
from ..reference import visible_blocks
from .base import MaskMethod, diagonal_sums, last_queries_attention, rank_mask, sink_and_diagonal


@dataclass(frozen=True)
class VerticalSlashConfig(AttentionConfig):
    """Budgets in tokens, as MInference's configs give them (its Llama-3 default: 1000 / 6096, last 64 queries)."""

    block_size: int = 128
    last_q: int = 64
    vertical_size: int = 1000
    slash_size: int = 6096
    min_sparse_len: int | None = None  # None: the measured dense/sparse crossover (spec §6)
    dense_layers: tuple[int, ...] = ()
    layer_overrides: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)

    method: ClassVar[str] = "vertical_slash"
    __hash__ = AttentionConfig.__hash__

    def __post_init__(self) -> None:
        for name in ("last_q", "vertical_size", "slash_size"):
            _check_int(name, getattr(self, name), minimum=1)
        self._validate_common()


def slash_blocks(kept_offsets: torch.Tensor, q_len: int, k_len: int, block_size: int) -> torch.Tensor:
    """bool ``[B, H, nbq, nbk]``: blocks crossed by a kept diagonal offset (``kept_offsets`` bool ``[B, H, Lk]``)."""
    n_qblocks, n_kblocks = -(-q_len // block_size), -(-k_len // block_size)
    delta = k_len - q_len
    i = torch.arange(n_qblocks, device=kept_offsets.device)[:, None]
    j = torch.arange(n_kblocks, device=kept_offsets.device)[None, :]
    # offsets (query position + δ − key position) met inside block (i, j)
    low = (i * block_size + delta - ((j + 1) * block_size - 1)).clamp(min=0, max=k_len)
    high = (torch.clamp((i + 1) * block_size, max=q_len) - 1 + delta - j * block_size).clamp(min=-1, max=k_len - 1)
    counts = torch.nn.functional.pad(kept_offsets.int().cumsum(-1), (1, 0))  # counts[o] = kept offsets < o
    batch, heads = kept_offsets.shape[:2]
    gather = lambda idx: counts.gather(-1, idx.expand(n_qblocks, n_kblocks).reshape(1, 1, -1).expand(batch, heads, -1))  # noqa: E731
    return (gather(high + 1) - gather(low) > 0).view(batch, heads, n_qblocks, n_kblocks)


def estimate(q: torch.Tensor, k: torch.Tensor, cfg: VerticalSlashConfig, layer=None, *, scale=None) -> torch.Tensor:
    q_len, k_len = q.shape[2], k.shape[2]
    bk = cfg.block_size
    attn = last_queries_attention(q, k, cfg.last_q, 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    vertical = attn.sum(2)  # [B, H, Lk]
    slash = diagonal_sums(attn)  # [B, H, Lk], by offset
    kept_keys = rank_mask(vertical, cfg.vertical_size)
    kept_offsets = rank_mask(slash, cfg.slash_size)
    n_kblocks = -(-k_len // bk)
    key_blocks = torch.nn.functional.pad(kept_keys, (0, n_kblocks * bk - k_len)).view(*kept_keys.shape[:2], n_kblocks, bk).any(-1)
    mask = key_blocks[:, :, None, :] | slash_blocks(kept_offsets, q_len, k_len, bk)
    return (mask & visible_blocks(q_len, k_len, bk, q.device)) | sink_and_diagonal(q_len, k_len, bk, q.device)


METHOD = MaskMethod("vertical_slash", VerticalSlashConfig, estimate,
                "MInference online vertical + slash from the last 64 queries, fixed budgets (1000 / 6096 tokens)")
