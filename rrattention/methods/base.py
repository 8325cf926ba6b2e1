"""What every method provides, and the block-grid helpers they share.

A method turns ``q [B, Hq, Lq, D]``, ``k [B, Hkv, Lk, D]`` into a bool block mask
``[B, Hq, ceil(Lq/Bk), ceil(Lk/Bk)]`` (``estimate``); the shared pipeline then applies the dense
policies of spec §6 and runs the one block-sparse attention kernel on that mask. So methods
differ only in their estimator and selection, never in the attention they compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config import AttentionConfig
from ..reference import forced_blocks, last_query_key_positions


@dataclass(frozen=True)
class Method:
    """A registered method: its name, its config class and its estimator.

    ``estimate(q, k, cfg, layer=None, *, scale=None, backend=None)`` returns the bool block mask;
    it is a subset of the causally visible blocks.
    """

    name: str
    config_class: type[AttentionConfig]
    estimate: Callable[..., torch.Tensor]
    description: str


def diagonal_blocks(q_len: int, k_len: int, block_size: int, device) -> torch.Tensor:
    """int64 ``[nbq]``: the key block holding each query-block row's last query (bottom-right)."""
    return last_query_key_positions(q_len, k_len, block_size, device) // block_size


def sink_and_diagonal(q_len: int, k_len: int, block_size: int, device, *, sink: bool = True, diagonal: bool = True):
    """bool ``[nbq, nbk]``: block 0 and/or each row's diagonal block."""
    return forced_blocks(q_len, k_len, block_size, force_sink=sink, force_diagonal=diagonal,
                         dense_last_query_block=False, device=device)


def last_queries_attention(q: torch.Tensor, k: torch.Tensor, n: int, scale: float) -> torch.Tensor:
    """Exact causal softmax attention of the last ``n`` queries over all keys, fp32.

    Returns ``[B, Hq, n', Lk]`` with ``n' = min(n, Lq)``; GQA without repeating ``k``.
    """
    batch, q_heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    n = min(n, q_len)
    rows = (q[:, :, -n:].float() * scale).reshape(batch, kv_heads, (q_heads // kv_heads) * n, dim)
    logits = (rows @ k.float().transpose(-1, -2)).view(batch, q_heads, n, k_len)
    query_pos = torch.arange(k_len - n, k_len, device=q.device)
    logits.masked_fill_(torch.arange(k_len, device=q.device)[None, :] > query_pos[:, None], float("-inf"))
    return torch.softmax(logits, dim=-1)


def diagonal_sums(attn: torch.Tensor) -> torch.Tensor:
    """``[B, H, n, Lk]`` attention of the last ``n`` queries → ``[B, H, Lk]``: the mass on each
    diagonal offset ``o = query position − key position`` (``o = 0`` is the main diagonal)."""
    batch, heads, n, k_len = attn.shape
    # Row r (query position Lk − n + r) meets offset o at key Lk − n + r − o, i.e. at index
    # o + (n − 1 − r) of the reversed row: skew the reversed rows so that offsets line up in columns.
    width = k_len + n
    padded = torch.nn.functional.pad(attn.flip(-1), (0, n)).contiguous()
    skewed = padded.as_strided((batch, heads, n, k_len), (heads * n * width, n * width, width - 1, 1), n - 1)
    return skewed.sum(2)


def block_means(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[B, H, L, D]`` → fp32 ``[B, H, ceil(L/Bk), D]``: the mean token of each block (partial last block: its own tokens)."""
    batch, heads, length, dim = x.shape
    n_blocks = -(-length // block_size)
    padded = x.new_zeros(batch, heads, n_blocks * block_size, dim, dtype=torch.float32)
    padded[:, :, :length] = x.float()
    counts = torch.clamp(length - torch.arange(n_blocks, device=x.device) * block_size, max=block_size)
    return padded.view(batch, heads, n_blocks, block_size, dim).sum(3) / counts[:, None].float()


def rank_mask(scores: torch.Tensor, keep: torch.Tensor | int) -> torch.Tensor:
    """bool, like ``scores``: the ``keep`` highest entries of each row (ties: lower index first).

    ``keep`` is an int or a tensor broadcasting against ``scores.shape[:-1]``; no host synchronisation.
    """
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return rank < (keep[..., None] if isinstance(keep, torch.Tensor) else keep)


def cover_count(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """int64 ``scores.shape[:-1]``: how many of the highest entries hold ``fraction`` of each row's mass."""
    ranked = torch.sort(scores, dim=-1, descending=True).values
    before = torch.cumsum(ranked, dim=-1) - ranked
    return (before < fraction * scores.sum(-1, keepdim=True)).sum(-1)

