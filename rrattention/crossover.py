"""The measured dense/sparse crossover: the default ``min_sparse_len`` of every sparse method (spec §6).

``data/crossover.json`` is written by ``tools/measure_crossover.py`` on the target GPU: for each
measured shape (head dim, query heads, KV heads), the shortest key length from which one whole
sparse attention call (estimate + select + block-sparse attention at a stated density) is faster
than the dense kernel, at that length and every longer one measured. A shape that was not measured
takes the nearest measured one: same head dim first, then the closest number of query heads and
group size on a log scale.

The default depends on the shape only, never on the device a call runs on, so a CPU run makes the
same dense/sparse decisions as a GPU run of the same model.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

TABLE = Path(__file__).with_name("data") / "crossover.json"


@functools.cache
def table() -> dict:
    """The committed measurement: provenance fields and ``entries`` (one per measured shape)."""
    if not TABLE.exists():
        raise FileNotFoundError(f"{TABLE} is missing: reinstall rrattention, or pass min_sparse_len explicitly")
    return json.loads(TABLE.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=256)
def min_sparse_len(head_dim: int, q_heads: int, kv_heads: int) -> int:
    """The measured crossover for a call with this head dim and these heads (nearest measured shape)."""

    def distance(entry: dict) -> tuple:
        return (abs(math.log2(entry["head_dim"] / head_dim)),
                abs(math.log2(entry["q_heads"] / q_heads)) + abs(math.log2((entry["q_heads"] // entry["kv_heads"]) / (q_heads // kv_heads))))

    return int(min(table()["entries"], key=distance)["min_sparse_len"])
