"""``rrattention``: the paper's method (spec §2–§4), configured by :class:`rrattention.RRConfig`."""

from __future__ import annotations

import torch

from ..config import RRConfig
from .base import Method


def estimate(q: torch.Tensor, k: torch.Tensor, cfg: RRConfig, layer=None, *, scale=None, backend=None) -> torch.Tensor:
    """Round-robin sampled stride scores → Top-τ selection (the public stage functions)."""
    from .. import api

    scores = api.estimate_block_scores(q, k, cfg, layer=layer, scale=scale, backend=backend)
    return api.select_blocks(scores, cfg, q_len=q.shape[2], k_len=k.shape[2], layer=layer, backend=backend)


METHOD = Method("rrattention", RRConfig, estimate,
                "per-head round-robin sampled query per stride vs stride-mean keys, Top-τ (S=8, τ=0.95)")
