"""RRAttention: dynamic block-sparse attention with per-head round-robin query sampling.

The normative definition is ``spec.md``; :mod:`rrattention.reference` implements it stage by stage.
"""

from . import backends, crossover, methods, reference
from .api import block_sparse_attention, estimate_block_scores, rr_attention, select_blocks, to_kv_index
from .config import HEAD_SHIFTS, SELECTORS, RRConfig
from .plan import AttentionPlan, PaddingPlan
from .policy import dense_reason
from .stats import RRStats
from .varlen import rr_attention_varlen

__version__ = "0.1.0"


def __getattr__(name):
    # `rr.hf` imports transformers only when asked for (an optional dependency: the [hf] extra).
    if name == "hf":
        from .integrations import hf

        return hf
    raise AttributeError(f"module 'rrattention' has no attribute {name!r}")

__all__ = [
    "AttentionPlan",
    "HEAD_SHIFTS",
    "PaddingPlan",
    "RRConfig",
    "RRStats",
    "SELECTORS",
    "__version__",
    "backends",
    "crossover",
    "block_sparse_attention",
    "methods",
    "dense_reason",
    "estimate_block_scores",
    "reference",
    "rr_attention",
    "rr_attention_varlen",
    "select_blocks",
    "to_kv_index",
]
