"""Spec §2 under tensor parallelism: which global query heads a rank holds.

A tensor-parallel rank holds a slice of the model's heads, and its round-robin offsets must come
from the global head index (``head_start + h``), or the ranks together select differently from
one device. Engines shard query heads the same way, column-wise and in rank order: rank ``p`` of
``n`` holds query heads ``[p·H_local, (p+1)·H_local)`` with ``H_local = Hq / n``. KV heads are
either sharded with them (``n`` divides ``Hkv``: every rank keeps the model's group size ``G``) or,
when ``n > Hkv`` (vLLM), replicated so that each rank holds the one KV head its query heads use;
then a rank holds part of a group, and ``head_shift="group_round_robin"``, which needs whole
groups, is declined. Framework-free: the transformers hook and the vLLM plugin both describe their
rank with these rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class HeadShard:
    """The heads of one rank's attention calls.

    ``head_start`` is the global index of the rank's query head 0; ``kv_replicated`` says that the
    rank holds one KV head shared with other ranks (``n > Hkv``), not a slice of the KV heads.
    """

    head_start: int = 0
    kv_replicated: bool = False


NOT_SHARDED = HeadShard()


def rank_head_start(rank: int, local_q_heads: int) -> int:
    """Global index of query head 0 of rank ``rank`` holding ``local_q_heads`` heads (``rank · H_local``)."""
    return rank * local_q_heads


def head_shard(*, rank: int, size: int, local_q_heads: int, local_kv_heads: int, total_q_heads: int,
               total_kv_heads: int) -> HeadShard:
    """The rank's :class:`HeadShard`, from the heads it holds and the model's.

    Calls that hold every query head are not sharded (``head_start`` 0), whatever the rank: a
    model whose attention is replicated on every rank. Raises ``ValueError`` for a split no
    engine makes (uneven query heads, KV heads neither sharded with them nor one per rank).
    """
    if size <= 1 or local_q_heads == total_q_heads:
        return NOT_SHARDED
    if not 0 <= rank < size:
        raise ValueError(f"tensor-parallel rank must be in [0, {size}), got {rank}")
    if local_q_heads * size != total_q_heads:
        raise ValueError(f"tensor parallelism: a rank holds {local_q_heads} of the model's {total_q_heads} query heads "
                         f"on {size} ranks; rrattention needs them split evenly ({total_q_heads} / {size} per rank)")
    start = rank_head_start(rank, local_q_heads)
    if local_kv_heads * size == total_kv_heads:
        return HeadShard(start, False)
    group = total_q_heads // total_kv_heads
    if local_kv_heads == 1 and size > total_kv_heads and group % local_q_heads == 0:
        return HeadShard(start, True)
    raise ValueError(f"tensor parallelism: a rank holds {local_kv_heads} of the model's {total_kv_heads} KV heads with "
                     f"{local_q_heads} of its {total_q_heads} query heads on {size} ranks; rrattention needs the KV "
                     f"heads sharded with their query heads, or one replicated KV head per rank")


def replicated_kv_reason(head_shifts: Iterable[str], tp_size: int, total_kv_heads: int) -> str | None:
    """Why ``group_round_robin`` cannot run when ``tp_size > Hkv`` replicates the KV heads, else None."""
    if tp_size > total_kv_heads and "group_round_robin" in set(head_shifts):
        return (f"head_shift='group_round_robin' needs the model's KV groups on each rank, but tensor parallelism "
                f"of {tp_size} ranks > {total_kv_heads} KV heads replicates them; use head_shift='round_robin'")
    return None
