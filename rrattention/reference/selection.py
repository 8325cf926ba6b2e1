"""Spec §4 — Top-τ block selection, the causal and forced masks, and the kernels' compact form."""

from __future__ import annotations

import torch


def last_query_key_positions(q_len: int, k_len: int, block_size: int, device=None) -> torch.Tensor:
    """Key position of each query block's last query, ``min((i+1)·Bk, Lq) − 1 + δ``.

    Returns:
        int64 ``[ceil(Lq/Bk)]``.
    """
    n_qblocks = -(-q_len // block_size)
    ends = torch.clamp((torch.arange(n_qblocks, device=device) + 1) * block_size, max=q_len)
    return ends - 1 + (k_len - q_len)


def visible_blocks(q_len: int, k_len: int, block_size: int, device=None) -> torch.Tensor:
    """Causally visible blocks, bottom-right aligned: block ``j`` is visible to row ``i`` iff
    ``j·Bk ≤ min((i+1)·Bk, Lq) − 1 + δ`` (spec §4 step 4).

    Returns:
        bool ``[ceil(Lq/Bk), ceil(Lk/Bk)]``.
    """
    n_kblocks = -(-k_len // block_size)
    first_key = torch.arange(n_kblocks, device=device) * block_size
    return first_key[None, :] <= last_query_key_positions(q_len, k_len, block_size, device)[:, None]


def forced_blocks(
    q_len: int,
    k_len: int,
    block_size: int,
    *,
    force_sink: bool,
    force_diagonal: bool,
    dense_last_query_block: bool,
    device=None,
) -> torch.Tensor:
    """Blocks kept regardless of their scores (spec §4 step 5).

    ``force_sink`` → block 0; ``force_diagonal`` → the block holding the row's last query
    position; ``dense_last_query_block`` → every visible block of the last row.

    Returns:
        bool ``[ceil(Lq/Bk), ceil(Lk/Bk)]``, a subset of :func:`visible_blocks`.
    """
    visible = visible_blocks(q_len, k_len, block_size, device)
    forced = torch.zeros_like(visible)
    if force_sink:
        forced[:, 0] = True
    if force_diagonal:
        diagonal = last_query_key_positions(q_len, k_len, block_size, device) // block_size
        forced[torch.arange(len(diagonal), device=device), diagonal] = True
    if dense_last_query_block:
        forced[-1] = visible[-1]
    return forced


def top_mass(values: torch.Tensor, total: torch.Tensor, tau: float) -> torch.Tensor:
    """Per row, the highest-ranked entries whose mass reaches ``τ·total``.

    Entries are ranked by value descending, ties by index ascending. An entry is kept iff the
    mass ranked strictly before it is ``< τ·total``. This is evaluated in the equivalent form
    "mass ranked at or after it ``> (1 − τ)·total``", with that suffix summed from the smallest
    entry up: then ``τ = 1`` keeps exactly the positive entries, free of rounding.

    Args:
        values: fp32 ``[..., n]``, non-negative.
        total: fp32 ``[...]``, the row mass the threshold refers to (``Σ values`` for top-τ;
            more when some mass was set aside, as in ``forced_first``).
        tau: ``τ`` in (0, 1].

    Returns:
        bool ``[..., n]``; all False where ``total == 0``.
    """
    ranked, order = torch.sort(values, dim=-1, descending=True, stable=True)
    mass_from_here = torch.flip(torch.cumsum(torch.flip(ranked, [-1]), dim=-1), [-1])
    keep_ranked = mass_from_here > (1.0 - tau) * total[..., None]
    return torch.zeros_like(keep_ranked).scatter(-1, order, keep_ranked)


def select_blocks(
    scores: torch.Tensor,
    *,
    q_len: int,
    k_len: int,
    block_size: int,
    tau: float,
    selector: str = "top_tau",
    force_sink: bool = True,
    force_diagonal: bool = True,
    dense_last_query_block: bool = True,
) -> torch.Tensor:
    """Block mask from block scores (spec §4).

    ``top_tau``: keep the smallest prefix of each row (ranked by score) whose mass reaches
    ``τ·T``, ``T = Σ_j A[i, j]``. ``forced_first``: the forced blocks' mass counts first, then the
    other blocks in descending order while the running total stays ``< τ·T``. Both are then
    ANDed with the causal mask and ORed with the forced blocks.

    Args:
        scores: fp32 ``[B, Hq, ceil(Lq/Bk), ceil(Lk/Bk)]``.
        q_len, k_len: ``Lq ≤ Lk``.

    Returns:
        bool ``[B, Hq, ceil(Lq/Bk), ceil(Lk/Bk)]``.
    """
    device = scores.device
    visible = visible_blocks(q_len, k_len, block_size, device)
    forced = forced_blocks(
        q_len,
        k_len,
        block_size,
        force_sink=force_sink,
        force_diagonal=force_diagonal,
        dense_last_query_block=dense_last_query_block,
        device=device,
    )
    scores = scores.float()
    total = scores.sum(dim=-1)
    if selector == "top_tau":
        by_mass = top_mass(scores, total, tau)
    elif selector == "forced_first":
        # Only the forced sink and diagonal are "placed first"; the dense last row is a separate rule.
        placed_first = forced_blocks(
            q_len, k_len, block_size, force_sink=force_sink, force_diagonal=force_diagonal,
            dense_last_query_block=False, device=device,
        )
        by_mass = top_mass(scores.masked_fill(placed_first, 0.0), total, tau)
    else:
        raise ValueError(f"selector must be 'top_tau' or 'forced_first', got {selector!r}")
    return (by_mass & visible) | forced


def to_kv_index(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact form of a block mask, as ``BlockMask.from_kv_blocks`` takes it (spec §4).

    Args:
        block_mask: bool ``[..., nbq, nbk]``.

    Returns:
        ``(kv_count, kv_index)``: int32 ``[..., nbq]`` selected blocks per row, and int32
        ``[..., nbq, nbk]`` whose first ``kv_count`` entries are the selected key-block indices in
        ascending order, followed by the unselected ones in ascending order (FlexAttention's
        layout: every row is a permutation of ``range(nbk)``).
    """
    kv_count = block_mask.sum(dim=-1, dtype=torch.int32)
    kv_index = torch.argsort(block_mask.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return kv_count, kv_index
