"""Spec §5 through torch FlexAttention: the selected blocks as a ``BlockMask`` (``from_kv_blocks``).

Selected blocks that lie wholly in the past of every query of their row are passed as "full"
blocks (no mask evaluation); the others carry the bottom-right causal ``mask_mod``.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` ``[B, Hq, Lq, D]``, ``k, v`` ``[B, Hkv, Lk, D]``, bool ``block_mask`` ``[B or 1, Hq or 1, nbq, nbk]``.

    Returns ``out`` ``[B, Hq, Lq, D]`` and fp32 ``lse`` ``[B, Hq, Lq]`` (natural log).
    """
    from torch.nn.attention.flex_attention import BlockMask

    from .. import reference

    q_len, k_len = q.shape[2], k.shape[2]
    delta = k_len - q_len
    n_qblocks, n_kblocks = block_mask.shape[-2:]
    device = q.device
    row_first_query = torch.arange(n_qblocks, device=device) * block_size + delta
    block_last_key = (torch.arange(n_kblocks, device=device) + 1) * block_size - 1
    past = (block_last_key[None, :] <= row_first_query[:, None]) & (block_last_key[None, :] < k_len)
    block_mask = block_mask.expand(q.shape[0], q.shape[1], -1, -1)
    full = block_mask & past
    partial = block_mask & ~past
    partial_count, partial_index = reference.to_kv_index(partial)
    full_count, full_index = reference.to_kv_index(full)

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + delta

    mask = BlockMask.from_kv_blocks(
        partial_count, partial_index, full_count, full_index,
        BLOCK_SIZE=block_size, mask_mod=causal, seq_lengths=(q_len, k_len),
    )
    # FlexAttention's default 128-row tiles must divide the mask blocks; smaller blocks need smaller tiles.
    kernel_options = None if block_size >= 128 else {"BLOCK_M": block_size, "BLOCK_N": block_size}
    out, lse = _compiled_flex_attention()(
        q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1], return_lse=True,
        kernel_options=kernel_options,
    )
    return out, lse.float()
