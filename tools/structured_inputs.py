"""Synthetic q, k, v whose causal attention looks like a long-context LLM's: local, sink-heavy, with
some diffuse heads, so that τ = 0.95 selects a realistic share of the blocks (random Gaussian
inputs give near-uniform attention, which no sparse method can skip).

Each KV head has a content direction ``c`` that its keys and queries share, rotated by RoPE (base
500000, as Llama 3) at each token's position: ``q_t · k_s`` then holds ``Σ_i |c_i|² cos((t − s) ω_i)``
over the rotary pairs ``i``, largest at ``s = t`` and decaying with distance (locality). The first
``SINKS`` keys also carry a position-free direction ``w`` that every query carries too (the
attention sink). Query heads differ in how strongly they carry each (``HEAD_KINDS``, by head index
within the KV group):

* local heads: content weight 1, sink weight 0.6;
* sink-heavy heads: content weight 0.8, sink weight 3 (about a third of the last rows' mass on the sinks);
* diffuse heads (one in four): content weight 0.15, sink weight 0.3, close to uniform attention.

With τ = 0.95, S = 8 and 128-token blocks the reference selects, for 8 query / 2 KV heads at D = 128
(seed 1): sparsity 0.70 at 8K, 0.75 at 32K and 0.76 at 64K on average; local and sink-heavy heads
0.91–0.99, diffuse heads 0.06–0.07.

Values are Gaussian. Everything comes from one seeded generator on the given device.
"""

from __future__ import annotations

import torch

SINKS = 4
CONTENT = 1.5  # scale of the shared content direction (queries and keys)
NOISE = 0.3  # per-token Gaussian noise (queries and keys)
PAIRS = 24  # rotary pairs (of the fastest) that carry the content
ROPE_BASE = 500_000.0
# (content weight, sink weight) of query head j of a KV group, by j % 4
HEAD_KINDS = ((1.0, 0.6), (0.8, 3.0), (1.0, 0.6), (0.15, 0.3))


def rope(x: torch.Tensor, positions: torch.Tensor, base: float = ROPE_BASE) -> torch.Tensor:
    """``x [..., L, D]`` rotated pairwise (half-split pairs, as Llama) by ``positions [L]``."""
    d = x.shape[-1]
    freqs = base ** (-torch.arange(0, d // 2, device=x.device, dtype=torch.float32) * 2 / d)
    angle = positions.float()[:, None] * freqs[None]
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def structured_qkv(batch: int, q_heads: int, kv_heads: int, length: int, head_dim: int, dtype: torch.dtype,
                   device: str | torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q [B, Hq, L, D]``, ``k, v [B, Hkv, L, D]`` of the module docstring's structure, in ``dtype``."""
    if q_heads % kv_heads:
        raise ValueError(f"q_heads must be a multiple of kv_heads, got q_heads={q_heads}, kv_heads={kv_heads}")
    g = torch.Generator(device=device).manual_seed(seed)
    group = q_heads // kv_heads

    def gaussian(*shape):
        return torch.randn(*shape, device=device, generator=g)

    positions = torch.arange(length, device=device)
    # The content direction has the same energy in each of the fastest PAIRS rotary pairs and none in the
    # slow ones (random phases): the logit at distance Δ is CONTENT²·(D/PAIRS)·Σ cos(Δ·ω_i)/√D, at its peak
    # (≈ 25 for a local head at D = 128) on the diagonal and decaying within about a thousand tokens, far
    # above the noise's logits, so local heads stay local at 128K. Slow pairs would keep it near its peak
    # across the whole sequence; random magnitudes would make some KV heads local and others not.
    half = head_dim // 2
    amplitude = torch.zeros(half, device=device)
    amplitude[:PAIRS] = CONTENT * (head_dim / PAIRS) ** 0.5
    phase = 2 * torch.pi * torch.rand(batch, kv_heads, 1, half, device=device, generator=g)
    content = torch.cat([amplitude * phase.cos(), amplitude * phase.sin()], dim=-1)
    # the sink direction lives in the pairs without content, so that it adds nothing to the logits of keys
    # past the sinks but their noise: |w|² = D, a sink logit of (sink weight)·√D
    free = torch.ones(half, device=device)
    free[:PAIRS] = 0
    sink = gaussian(batch, kv_heads, 1, head_dim) * free.repeat(2)
    sink = sink * (head_dim ** 0.5 / sink.norm(dim=-1, keepdim=True))
    k = rope(content + NOISE * gaussian(batch, kv_heads, length, head_dim), positions)
    k[:, :, :SINKS] += sink
    weights = torch.tensor([HEAD_KINDS[j % len(HEAD_KINDS)] for j in range(group)], device=device)
    content_w = weights[:, 0].repeat(kv_heads)[None, :, None, None]  # query head h = kv·G + j
    sink_w = weights[:, 1].repeat(kv_heads)[None, :, None, None]
    per_query = lambda x: x.repeat_interleave(group, dim=1)  # noqa: E731
    q = rope(content_w * per_query(content) + NOISE * gaussian(batch, q_heads, length, head_dim), positions)
    q = q + sink_w * per_query(sink)
    v = gaussian(batch, kv_heads, length, head_dim)
    return q.to(dtype), k.to(dtype), v.to(dtype)
