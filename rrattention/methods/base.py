"""What every method provides, and the block-grid helpers they share.

A method turns ``q [B, Hq, Lq, D]``, ``k [B, Hkv, Lk, D]`` into a bool block mask
``[B, Hq, ceil(Lq/Bk), ceil(Lk/Bk)]`` (``estimate``); the shared pipeline then applies the dense
policies of spec §6 and runs the one block-sparse attention kernel on that mask. So methods
differ only in their estimator and selection, never in the attention they compute. Methods use
the backends' stage operations (:mod:`rrattention.backends`) and never the public API.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

import torch

from .. import backends
from ..backends import Packed, Problem, Selection, StageBackends, causal_flops
from ..config import AttentionConfig
from ..reference import forced_blocks, last_query_key_positions
from ..timing import StageTimer, stage


class Method:
    """A registered method: its name, its config class and its estimator (estimate → block mask).

    The plan calls :meth:`prepare` once per layer and :meth:`select` on every call; ``select``
    uses the backends chosen for the stages the method names in ``stages`` and returns the
    :class:`~rrattention.backends.Selection` the shared attention kernel runs on. A method with
    ``packed = True`` takes the packed layout in one call (applying spec §6's per-sequence dense
    policies itself); the others are planned one sequence at a time.
    """

    name: str
    config_class: type[AttentionConfig]
    description: str
    stages: tuple[str, ...] = ()
    packed: bool = False

    def prepare(self, cfg: AttentionConfig, layer: int | None, scale: float, per_sequence_min_len: int | None = None,
                *, head_start: int = 0) -> Any:
        """Everything :meth:`select` needs besides the tensors, resolved once per layer.

        ``per_sequence_min_len`` (packed methods, packed layout): the key length below which a
        sequence runs dense; sequences of one query run dense too (spec §6). ``head_start``: the
        global index of the calls' query head 0 (a tensor-parallel slice); only estimators that
        treat heads differently use it."""
        return cfg, layer, scale

    def select(self, ops: StageBackends, q: torch.Tensor, k: torch.Tensor, prepared: Any,
               packed: Packed | None = None, timer: StageTimer | None = None) -> Selection:
        """The block selection of one call; ``timer`` times its stages (``estimate``, ``select``)."""
        raise NotImplementedError

    def graph_key(self, prepared: Any) -> Hashable | None:
        """What :meth:`select` launches with these prepared settings, as a hashable key: layers whose
        keys are equal make the same launches on same-shaped tensors, so they can replay one CUDA
        graph (:mod:`rrattention.graphs`). None (the default): the method does not promise that its
        calls launch the same work with no host synchronisation, and runs eagerly."""
        return None

    def estimate(self, q: torch.Tensor, k: torch.Tensor, cfg: AttentionConfig, layer: int | None = None, *,
                 scale: float | None = None, backend: str | None = None, head_start: int = 0) -> torch.Tensor:
        """The bool block mask ``[B, Hq, ceil(Lq/Bk), ceil(Lk/Bk)]`` for ``q [B, Hq, Lq, D]``,
        ``k [B, Hkv, Lk, D]`` (validated by the caller), a subset of the causally visible blocks."""
        cfg = cfg.layer_config(layer)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        ops = backends.choose_all(problem_of(q, k, cfg), backend)
        return self.select(ops, q, k, self.prepare(cfg, layer, scale, head_start=head_start)).block_mask

    def __repr__(self) -> str:
        return f"<method {self.name!r}>"


class MaskMethod(Method):
    """A method whose estimator is a plain-PyTorch function ``(q, k, cfg, layer, *, scale) → bool mask``."""

    def __init__(self, name: str, config_class: type[AttentionConfig], mask: Callable[..., torch.Tensor], description: str):
        self.name, self.config_class, self.mask, self.description = name, config_class, mask, description

    def select(self, ops, q, k, prepared, packed=None, timer=None) -> Selection:
        cfg, layer, scale = prepared
        with stage(timer, "estimate"):
            return Selection(self.mask(q, k, cfg, layer, scale=scale))


def problem_of(q: torch.Tensor, k: torch.Tensor, cfg: AttentionConfig, varlen: bool = False) -> Problem:
    """What dispatch needs to know about a call on ``q``/``k``: padded ``[B, H, L, D]`` or packed
    ``[T, H, D]`` (``varlen``); the head axis is 1 in both."""
    flops = None if varlen else causal_flops(q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[-1])
    return Problem(device=q.device, block_size=cfg.block_size, dtype=q.dtype, head_dim=q.shape[-1],
                   stride=getattr(cfg, "stride", None), group=q.shape[1] // k.shape[1], varlen=varlen, dense_flops=flops)


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

