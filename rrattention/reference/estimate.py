"""Spec §3 — stride-level importance and block scores.

Readable, materialising oracle: per (sequence, query head) it forms the ``ceil(Lq/S) × ceil(Lk/S)``
stride-logit matrix, so memory is ``O(Lq/S · Lk/S)`` per head and never more.
"""

from __future__ import annotations

import math

import torch

from .sampling import sampled_query_positions


def stride_mean_keys(k: torch.Tensor, stride: int, keep: int | None = None) -> torch.Tensor:
    """Mean key of every key stride, ``K̄_n = (1/S)·Σ_{j<S} k_{nS+j}``, in fp32.

    Keys past ``Lk`` count as zero and the divisor stays ``S``.

    Args:
        k: ``[B, Hkv, Lk, D]``.
        stride: ``S``.
        keep: if given, only the first ``keep`` keys of each stride are summed (the others count
            as zero, divisor still ``S``); used for the diagonal stride under ``exact_stride_causal``.

    Returns:
        fp32 ``[B, Hkv, ceil(Lk/S), D]``.
    """
    batch, heads, k_len, dim = k.shape
    num_strides = -(-k_len // stride)
    padded = k.new_zeros(batch, heads, num_strides * stride, dim, dtype=torch.float32)
    padded[:, :, :k_len] = k.float()
    strided = padded.view(batch, heads, num_strides, stride, dim)
    if keep is not None:
        strided = strided[:, :, :, :keep]
    return strided.sum(dim=3) / stride


def stride_probabilities(
    q_rows: torch.Tensor,
    key_means: torch.Tensor,
    t: torch.Tensor,
    delta: int,
    stride: int,
    scale: float,
    diagonal_key_means: torch.Tensor | None = None,
) -> torch.Tensor:
    """``P[m, ·] = softmax_n(z[m, ·])`` over the key strides visible to each sampled row.

    Args:
        q_rows: ``[M, D]``, the sampled (valid) query rows of one head.
        key_means: fp32 ``[Nk, D]``, ``K̄`` of the head's KV head.
        t: int64 ``[M]``, their query positions; key stride ``n`` is visible iff ``n·S ≤ t + δ``.
        delta: ``δ = Lk − Lq``.
        stride: ``S``.
        scale: logit scale (``1/√D`` in the spec).
        diagonal_key_means: fp32 ``[Nk, D]``; if given (``exact_stride_causal``), the diagonal
            stride of each row, ``n = (t + δ) // S``, uses these partial means instead.

    Returns:
        fp32 ``[M, Nk]``; every row sums to 1 (stride 0 is always visible).
    """
    z = q_rows.float() @ key_means.T
    if diagonal_key_means is not None:
        diag = (t + delta) // stride
        z[torch.arange(len(t), device=z.device), diag] = (q_rows.float() * diagonal_key_means[diag]).sum(-1)
    n = torch.arange(key_means.shape[0], device=z.device)
    invisible = n[None, :] * stride > (t + delta)[:, None]
    return torch.softmax(z.mul_(scale).masked_fill_(invisible, float("-inf")), dim=-1)


def block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    stride: int,
    block_size: int,
    offsets: torch.Tensor,
    exact_stride_causal: bool = False,
    scale: float | None = None,
    precision: str = "exact",
) -> torch.Tensor:
    """Block scores ``A[i, j] = Σ_{m ∈ block i} Σ_{n ∈ block j} P[m, n]`` (spec §3).

    Each valid sampled row contributes mass 1, so a block row holding ``R`` valid rows sums to
    ``R``; rows with ``t_h(m) ≥ Lq`` contribute nothing.

    Args:
        q: ``[B, Hq, Lq, D]``.
        k: ``[B, Hkv, Lk, D]``, ``Hq % Hkv == 0``, ``Lq ≤ Lk`` (queries are the last ``Lq`` positions).
        stride: ``S``; block_size: ``Bk``, a multiple of ``S``.
        offsets: int64 ``[Hq]``, ``r_h`` from :func:`~rrattention.reference.sampling.head_offsets`.
        exact_stride_causal: restrict the diagonal stride to keys ``≤ t + δ``.
        scale: logit scale, default ``1/√D``.
        precision: ``exact``, or ``fast``: the stride means (not the diagonal partial means of
            ``exact_stride_causal``) rounded once to a 16-bit ``q``'s dtype (the Triton estimator's
            one-term mode, ``RRConfig.estimator_precision``).

    Returns:
        fp32 ``[B, Hq, ceil(Lq/Bk), ceil(Lk/Bk)]``.
    """
    batch, q_heads, q_len, dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    delta = k_len - q_len
    per_block = block_size // stride
    n_qblocks, n_kblocks = -(-q_len // block_size), -(-k_len // block_size)
    scale = 1.0 / math.sqrt(dim) if scale is None else scale

    key_means = stride_mean_keys(k, stride)
    if precision == "fast" and q.dtype in (torch.float16, torch.bfloat16):
        key_means = key_means.to(q.dtype).float()
    t_all, valid_all = sampled_query_positions(q_len, stride, offsets.to(q.device))
    key_block_of_stride = torch.arange(key_means.shape[2], device=q.device) // per_block
    scores = torch.zeros(batch, q_heads, n_qblocks, n_kblocks, dtype=torch.float32, device=q.device)
    for h in range(q_heads):
        t = t_all[h][valid_all[h]]  # valid rows are a prefix of the query strides
        query_block_of_row = torch.arange(len(t), device=q.device) // per_block
        diagonal_means = None
        if exact_stride_causal:
            visible_in_diagonal = int(offsets[h] + delta) % stride + 1
            diagonal_means = stride_mean_keys(k[:, h // group : h // group + 1], stride, keep=visible_in_diagonal)
        for b in range(batch):
            p = stride_probabilities(
                q[b, h, t],
                key_means[b, h // group],
                t,
                delta,
                stride,
                scale,
                None if diagonal_means is None else diagonal_means[b, 0],
            )
            per_row = p.new_zeros(len(t), n_kblocks).index_add_(1, key_block_of_stride, p)
            scores[b, h].index_add_(0, query_block_of_row, per_row)
    return scores
