"""XAttention's antidiagonal stride scoring (Xu et al., ICML 2025), in plain PyTorch.

Not part of RRAttention's spec: the estimator of the ``xattention`` baseline
(:mod:`rrattention.methods.xattention`), kept here so that the reference backend can serve it.
For query stride ``m`` and key stride ``n`` the logit is ``Σ_j q_{mS+S−1−j} · k_{nS+j} / (S·√D)``;
a softmax over the key strides visible to the stride's last query, then block sums.
"""

from __future__ import annotations

import math

import torch


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
