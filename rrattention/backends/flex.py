"""torch FlexAttention as the attention stage (``BlockMask.from_kv_blocks``); padded layout only."""

from __future__ import annotations

import torch

from .base import Backend, Selection


class FlexBackend(Backend):
    name = "flex"
    description = "torch FlexAttention on BlockMask.from_kv_blocks (attention stage only)"
    stages = frozenset({"attention"})
    devices = frozenset({"cuda"})
    max_head_dim = 256
    block_sizes = frozenset({64, 128})
    varlen = False

    def attend(self, q, k, v, selection: Selection, *, block_size: int, scale: float, packed=None,
               out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from ..kernels.flex_attention import block_sparse_attention

        result, lse = block_sparse_attention(q, k, v, selection.block_mask, block_size=block_size, scale=scale)
        return (result, lse) if out is None else (out.copy_(result), lse)
