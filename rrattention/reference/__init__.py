"""The definition of RRAttention in plain PyTorch, one module per stage of ``spec.md``.

==================  ===========  ==============================================================
module              spec         stage
==================  ===========  ==============================================================
``sampling``        §2           per-head round-robin query sampling offsets and positions
``estimate``        §3           stride mean keys, stride softmax, block scores
``selection``       §4           Top-τ / forced-first selection, causal and forced masks, kv_index
``attention``       §5           block-sparse attention with LSE; dense fallback of §6
==================  ===========  ==============================================================

These functions assume validated inputs; the public API (``rrattention.*``) validates and
dispatches to them. They run on any device PyTorch supports and compute internally in fp32.
"""

from .antidiagonal import antidiagonal_block_scores
from .attention import block_sparse_attention, dense_causal_attention
from .estimate import block_scores, stride_mean_keys, stride_probabilities
from .sampling import head_offsets, random_head_offset, sampled_query_positions
from .selection import forced_blocks, last_query_key_positions, select_blocks, to_kv_index, top_mass, visible_blocks

__all__ = [
    "antidiagonal_block_scores",
    "block_scores",
    "block_sparse_attention",
    "dense_causal_attention",
    "forced_blocks",
    "head_offsets",
    "last_query_key_positions",
    "random_head_offset",
    "sampled_query_positions",
    "select_blocks",
    "stride_mean_keys",
    "stride_probabilities",
    "to_kv_index",
    "top_mass",
    "visible_blocks",
]
