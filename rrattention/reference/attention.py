"""Spec §5 — block-sparse attention, and the dense attention the policies of §6 fall back to."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention of each query over the causally visible keys (``key ≤ query + δ``)
    of its row's selected blocks, computed as masked dense attention one query block at a time
    (memory ``O(B·Hq·Bk·Lk)``, never ``O(L²)``), in fp32.

    A query with no such key gets output 0 and LSE ``−inf``.

    Args:
        q: ``[B, Hq, Lq, D]``.
        k, v: ``[B, Hkv, Lk, D]``, ``Hq % Hkv == 0``, ``Lq ≤ Lk``.
        block_mask: bool ``[B or 1, Hq or 1, ceil(Lq/Bk), ceil(Lk/Bk)]``.
        block_size: ``Bk``.
        scale: softmax scale.

    Returns:
        ``(out, lse)``: ``out`` ``[B, Hq, Lq, D]`` in ``q.dtype``; ``lse`` fp32 ``[B, Hq, Lq]``
        (natural log of the softmax denominator of the scaled logits).
    """
    batch, q_heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    delta = k_len - q_len
    block_mask = block_mask.expand(batch, q_heads, -1, -1)
    k32, v32 = k.float(), v.float()
    out = torch.empty(batch, q_heads, q_len, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, q_heads, q_len, dtype=torch.float32, device=q.device)
    key_pos = torch.arange(k_len, device=q.device)
    for i in range(block_mask.shape[2]):
        q_start, q_end = i * block_size, min((i + 1) * block_size, q_len)
        n = q_end - q_start
        k_end = min(k_len, q_end + delta)  # keys after the block's last query are never visible
        # GQA: the G query heads of a KV head are stacked as rows of one matmul against that head.
        rows = (q[:, :, q_start:q_end].float() * scale).reshape(batch, kv_heads, group * n, dim)
        logits = (rows @ k32[:, :, :k_end].transpose(-1, -2)).view(batch, q_heads, n, k_end)
        causal = key_pos[:k_end] <= torch.arange(q_start + delta, q_end + delta, device=q.device)[:, None]
        selected = block_mask[:, :, i].repeat_interleave(block_size, dim=-1)[..., None, :k_end]
        logits.masked_fill_(~(causal & selected), float("-inf"))
        row_lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # -inf for a query with no visible key
        weights = logits.sub_(torch.where(torch.isneginf(row_lse), 0.0, row_lse)).exp_()
        values = weights.view(batch, kv_heads, group * n, k_end) @ v32[:, :, :k_end]
        out[:, :, q_start:q_end] = values.view(batch, q_heads, n, -1).to(q.dtype)
        lse[:, :, q_start:q_end] = row_lse.squeeze(-1)
    return out, lse


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float) -> torch.Tensor:
    """Dense causal attention, bottom-right aligned (``key ≤ query + δ``), via SDPA.

    Args:
        q: ``[B, Hq, Lq, D]``; k, v: ``[B, Hkv, Lk, D]``.

    Returns:
        ``[B, Hq, Lq, D]`` in ``q.dtype``.
    """
    q_len, k_len = q.shape[2], k.shape[2]
    group = q.shape[1] // k.shape[1]
    if q_len == 1:
        # Decode: the query sees every key, so no mask, and SDPA's own GQA rather than a G-times
        # repeated copy of the KV cache (timed against both alternatives: results/decode/).
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    if group > 1:
        # Repeating is what every SDPA backend accepts; `enable_gqa` is not supported by all.
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    if q_len == k_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q_len, k_len), scale=scale)
