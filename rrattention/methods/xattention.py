"""``xattention``: XAttention's antidiagonal stride scoring (Xu et al., ICML 2025).

For query stride ``m`` and key stride ``n`` the score is the mean of the ``S`` antidiagonal
products ``Σ_j q_{mS+S−1−j} · k_{nS+j} / (S·√D)``; a softmax over the key strides visible to the
stride's last query, block sums, then the ``find_blocks`` selection: the forced blocks' mass is
counted first (``selector="forced_first"``), ``keep_sink`` forces block 0 and ``keep_recent``
the diagonal blocks (not a dense last row). Every query head uses its KV head's keys (GQA without
repeating them); logits and softmax are fp32 (the original stores logits in bf16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from ..config import AttentionConfig, _check_bool, _check_fraction, _check_int
from ..reference import select_blocks
from .base import Method


@dataclass(frozen=True)
class XAttentionConfig(AttentionConfig):
    stride: int = 8
    block_size: int = 128
    tau: float = 0.9
    keep_sink: bool = True
    keep_recent: bool = True
    min_sparse_len: int = 8192
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


def antidiagonal_block_scores(q: torch.Tensor, k: torch.Tensor, *, stride: int, block_size: int, scale: float | None = None,
                              max_chunk_elements: int = 1 << 26) -> torch.Tensor:
    """Reference estimator: fp32 ``[B, Hq, ceil(Lq/Bk), ceil(Lk/Bk)]``.

    ``q`` ``[B, Hq, Lq, D]``, ``k`` ``[B, Hkv, Lk, D]``. Query strides are processed in chunks of
    whole blocks so that at most ``max_chunk_elements`` logits exist at a time; no per-head loop.
    """
    batch, q_heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group, delta = q_heads // kv_heads, k_len - q_len
    per_block = block_size // stride
    n_qblocks, n_kblocks = -(-q_len // block_size), -(-k_len // block_size)
    n_q, n_k = n_qblocks * per_block, -(-k_len // stride)
    scale = (1.0 / math.sqrt(dim) if scale is None else scale) / stride
    qs = q.new_zeros(batch, q_heads, n_q * stride, dim, dtype=torch.float32)
    qs[:, :, :q_len] = q.float()
    # row m holds q_{mS+S−1}, …, q_{mS}: the antidiagonal order
    qs = qs.view(batch, kv_heads, group, n_q, stride, dim).flip(4).reshape(batch, kv_heads, group * n_q, stride * dim)
    ks = k.new_zeros(batch, kv_heads, n_k * stride, dim, dtype=torch.float32)
    ks[:, :, :k_len] = k.float()
    ks = ks.view(batch, kv_heads, n_k, stride * dim)
    last_query = torch.clamp((torch.arange(n_q, device=q.device) + 1) * stride, max=q_len) - 1
    key_block = torch.arange(n_k, device=q.device) // per_block
    scores = q.new_zeros(batch, q_heads, n_qblocks, n_kblocks, dtype=torch.float32)
    rows_per_chunk = max(1, max_chunk_elements // (q_heads * n_k * per_block * batch)) * per_block
    for m0 in range(0, n_q, rows_per_chunk):
        m1 = min(n_q, m0 + rows_per_chunk)
        rows = qs.view(batch, kv_heads, group, n_q, -1)[:, :, :, m0:m1].reshape(batch, kv_heads, -1, stride * dim)
        z = (rows @ ks.transpose(-1, -2)).view(batch, q_heads, m1 - m0, n_k) * scale
        invisible = torch.arange(n_k, device=q.device)[None, :] * stride > (last_query[m0:m1] + delta)[:, None]
        p = torch.softmax(z.masked_fill_(invisible, float("-inf")), dim=-1)
        p = p * (torch.arange(m0, m1, device=q.device) * stride < q_len)[:, None]  # strides past Lq hold no query
        per_row = p.new_zeros(batch, q_heads, m1 - m0, n_kblocks).index_add_(-1, key_block, p)
        scores[:, :, m0 // per_block : m1 // per_block] = per_row.view(batch, q_heads, -1, per_block, n_kblocks).sum(3)
    return scores


def select(scores: torch.Tensor, cfg: XAttentionConfig, q_len: int, k_len: int) -> torch.Tensor:
    """``find_blocks``: forced blocks' mass first, then the rest while below ``τ·T``; AND causal."""
    return select_blocks(scores, q_len=q_len, k_len=k_len, block_size=cfg.block_size, tau=cfg.tau,
                         selector="forced_first", force_sink=cfg.keep_sink, force_diagonal=cfg.keep_recent,
                         dense_last_query_block=False)


def estimate(q: torch.Tensor, k: torch.Tensor, cfg: XAttentionConfig, layer=None, *, scale=None, backend=None) -> torch.Tensor:
    from .. import backends

    q_len, k_len = q.shape[2], k.shape[2]
    problem = backends.Problem(q.device, cfg.block_size, q.dtype, q.shape[-1], cfg.stride, q.shape[1] // k.shape[1])
    if backends.choose("estimate", problem, backend) == "triton":
        from ..kernels.estimate import estimate_block_scores

        scores = estimate_block_scores(q, k, stride=cfg.stride, block_size=cfg.block_size, head_shift="round_robin",
                                       scale=q.shape[-1] ** -0.5 if scale is None else scale, antidiagonal=True)
    else:
        scores = antidiagonal_block_scores(q, k, stride=cfg.stride, block_size=cfg.block_size, scale=scale)
    return select(scores, cfg, q_len, k_len)


METHOD = Method("xattention", XAttentionConfig, estimate,
                "antidiagonal stride scoring, forced blocks counted first, Top-τ (S=8, τ=0.9)")
