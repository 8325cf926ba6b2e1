"""Spec §2 — per-head round-robin query sampling.

Head ``h`` samples, in every query stride ``m``, the single query token ``t_h(m) = m·S + r_h``;
the offset ``r_h`` comes from the head-shift policy.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def layer_hash(seed: int, layer: int) -> int:
    """``splitmix64(splitmix64(seed) ^ layer)``: the per-layer part of :func:`random_head_offset`."""
    return _splitmix64(_splitmix64(seed) ^ layer)


def random_head_offset(seed: int, layer: int, head: int, stride: int) -> int:
    """``r_h`` of ``head_shift="random"``: ``splitmix64(splitmix64(splitmix64(seed) ^ layer) ^ head) mod S``.

    A plain integer hash rather than a framework RNG, so any implementation (and any device)
    reproduces the same offsets from ``(seed, layer, head)``.
    """
    return _splitmix64(layer_hash(seed, layer) ^ head) % stride


def head_offsets(
    num_q_heads: int,
    num_kv_heads: int,
    stride: int,
    head_shift: str = "round_robin",
    *,
    layer: int = 0,
    seed: int = 0,
    head_start: int = 0,
) -> torch.Tensor:
    """Sampling offset ``r_h`` of every query head (spec §2 table).

    Args:
        num_q_heads: ``Hq``, the heads of this call; ``h`` below is the global query-head index
            ``head_start + i`` of the call's head ``i`` in ``[0, Hq)``.
        num_kv_heads: ``Hkv``; ``G = Hq / Hkv`` query heads share a KV head (a slice of the model's
            heads must keep the model's ``G`` for ``group_round_robin``).
        stride: ``S``.
        head_shift: ``round_robin`` (``h mod S``), ``fixed`` (``S − 1``), ``random``
            (:func:`random_head_offset`) or ``group_round_robin``
            (``(h mod G)·S/G + (h // G) mod (S/G)`` when ``G`` divides ``S``, else ``round_robin``).
        layer, seed: only used by ``random``.
        head_start: the global index of the call's head 0 (tensor parallelism: ``rank · Hq``).

    Returns:
        int64 ``[Hq]`` on the CPU, values in ``[0, S)``.
    """
    heads = torch.arange(head_start, head_start + num_q_heads, dtype=torch.int64)
    group = num_q_heads // num_kv_heads
    if head_shift == "round_robin":
        return heads % stride
    if head_shift == "fixed":
        return torch.full_like(heads, stride - 1)
    if head_shift == "random":
        return torch.tensor([random_head_offset(seed, layer, h, stride) for h in heads.tolist()], dtype=torch.int64)
    if head_shift == "group_round_robin":
        if stride % group != 0:
            return heads % stride
        per_group = stride // group
        return (heads % group) * per_group + (heads // group) % per_group
    raise ValueError(f"head_shift must be one of round_robin, fixed, random, group_round_robin; got {head_shift!r}")


def sampled_query_positions(q_len: int, stride: int, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled query token of every (head, query stride): ``t_h(m) = m·S + r_h``.

    Args:
        q_len: ``Lq``.
        stride: ``S``.
        offsets: int64 ``[Hq]``, from :func:`head_offsets`.

    Returns:
        ``(t, valid)``, both ``[Hq, ceil(Lq/S)]``: int64 query positions (in query coordinates,
        ``0 … Lq−1``; the key position is ``t + δ``) and bool ``t < Lq``.
    """
    num_strides = -(-q_len // stride)
    t = torch.arange(num_strides, dtype=torch.int64, device=offsets.device)[None, :] * stride + offsets[:, None]
    return t, t < q_len
