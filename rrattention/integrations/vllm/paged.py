"""vLLM's paged KV cache read into the packed layout, and the attention of a run of a batch's rows.

Nothing here imports vLLM: the backend (:mod:`.backend`) and its CPU variant (:mod:`.cpu`) call
it, and ``tools/check_vllm_kv.py`` checks it on a GPU where vLLM is not installed.

vLLM hands an attention layer its cache as the logical view ``kv_cache [num_blocks, Hkv,
block_size, 2·D]`` (keys in ``[..., :D]``, values in ``[..., D:]``; the physical order of the axes
is the KV-cache layout's, and only the view's strides say it), a ``block_table [num_reqs,
max_blocks]`` of page ids per request, and per request its query start (``query_start_loc``) and
key count (``seq_lens``): request ``r`` has ``Lq`` new tokens at the end of its ``Lk`` keys,
key ``p`` living in page ``block_table[r, p // block_size]`` at slot ``p % block_size``.

:class:`PagedRows` describes a contiguous run of a batch's requests (vLLM orders decodes first);
:meth:`PagedRows.gather` copies their keys and values out of the cache into flash-attn's packed
``[Tk, Hkv, D]`` (one indexing per layer), and :meth:`PagedRows.attend` runs the rows' queries
through an :class:`~rrattention.plan.AttentionPlan` of the packed layout, bottom-right causal
(queries are the last ``Lq`` of ``Lk`` keys), with spec §6's dense policies per sequence. The
plans are built on the first layer of a step and reused by every other layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ...backends import Packed
from ...config import AttentionConfig
from ...plan import AttentionPlan, PlanRun
from ...stats import RRStats


def kv_pages(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(key_cache, value_cache)``, each ``[num_blocks, block_size, Hkv, D]`` (views, any strides),
    of vLLM's logical ``kv_cache [num_blocks, Hkv, block_size, 2·D]`` (FlashAttention's reading)."""
    if kv_cache.dim() != 4 or kv_cache.shape[-1] != 2 * head_size:
        raise ValueError(f"kv_cache must be [num_blocks, num_kv_heads, block_size, 2*head_size={2 * head_size}], "
                         f"got shape {tuple(kv_cache.shape)}")
    pages = kv_cache.transpose(1, 2)
    return pages[..., :head_size], pages[..., head_size:]


def write_kv(kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store ``key, value [T, Hkv, D]`` at ``slot_mapping [T']`` (``block · block_size + offset``;
    ``T' ≤ T``: vLLM pads the token axis, and a slot ``< 0`` is a padding token that is skipped)."""
    num_blocks, _, block_size, _ = kv_cache.shape
    key_cache, value_cache = kv_pages(kv_cache, key.shape[-1])
    slots = slot_mapping.long()
    n = slots.shape[0]
    keep = slots >= 0
    slots, key, value = slots[keep], key[:n][keep], value[:n][keep]
    key_cache[slots // block_size, slots % block_size] = key.to(key_cache.dtype)
    value_cache[slots // block_size, slots % block_size] = value.to(value_cache.dtype)


@dataclass
class PagedRows:
    """Requests ``[first, last)`` of a batch: their query tokens ``[token_start, token_end)`` of the
    batch and where each of their keys lies in the paged cache.

    Attributes:
        packed: the rows' packed layout (``cu_seqlens_q`` relative to ``token_start``,
            ``cu_seqlens_k`` over the gathered keys), host spans included.
        pages, slots: int64 ``[Tk]`` on the cache's device: page and in-page slot of every key.
        plans: the step's plans, one per (config, heads, dtype, …), shared by its layers.
    """

    first: int
    last: int
    token_start: int
    token_end: int
    packed: Packed
    pages: torch.Tensor
    slots: torch.Tensor
    plans: dict = field(default_factory=dict)

    @classmethod
    def build(cls, query_start_loc: Sequence[int], seq_lens: Sequence[int], block_table: torch.Tensor,
              block_size: int, first: int, last: int) -> "PagedRows":
        """The rows ``[first, last)`` of a batch from its host ``query_start_loc [num_reqs+1]`` and
        ``seq_lens [num_reqs]`` (ints) and its ``block_table [num_reqs, max_blocks]`` (on the
        cache's device); every row needs ``1 ≤ Lq ≤ Lk``."""
        if not 0 <= first < last <= len(seq_lens):
            raise ValueError(f"rows [{first}, {last}) are not a non-empty range of the {len(seq_lens)} requests")
        token_start = int(query_start_loc[first])
        q_bounds = [int(query_start_loc[r]) - token_start for r in range(first, last + 1)]
        k_lens = [int(seq_lens[r]) for r in range(first, last)]
        for r, (qa, qb, lk) in enumerate(zip(q_bounds, q_bounds[1:], k_lens)):
            if not 1 <= qb - qa <= lk:
                raise ValueError(f"request {first + r} has {qb - qa} queries and {lk} keys; need 1 <= Lq <= Lk")
        k_bounds = [0]
        for lk in k_lens:
            k_bounds.append(k_bounds[-1] + lk)
        device = block_table.device
        cu = lambda bounds: torch.tensor(bounds, dtype=torch.int32, device=device)  # noqa: E731
        spans = tuple(zip(q_bounds, q_bounds[1:], k_bounds, k_bounds[1:]))
        packed = Packed(cu(q_bounds), cu(k_bounds), max(b - a for a, b in zip(q_bounds, q_bounds[1:])), max(k_lens),
                        spans)
        # Key p of row r: page block_table[r, p // block_size], slot p % block_size (no host sync).
        lens = torch.tensor(k_lens, dtype=torch.int64, device=device)
        row = torch.repeat_interleave(torch.arange(first, last, device=device), lens, output_size=k_bounds[-1])
        starts = torch.tensor(k_bounds[:-1], dtype=torch.int64, device=device)
        position = torch.arange(k_bounds[-1], device=device) - starts[row - first]
        pages = block_table[row, position // block_size].long()
        return cls(first, last, token_start, token_start + q_bounds[-1], packed, pages, position % block_size)

    @property
    def num_seqs(self) -> int:
        return self.last - self.first

    def gather(self, kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' keys and values, packed: ``k, v [Tk, Hkv, D]`` (one gather of both; views of one copy)."""
        pages = kv_cache.transpose(1, 2)  # [num_blocks, block_size, Hkv, 2·D]
        both = pages[self.pages, self.slots]
        return both[..., :head_size], both[..., head_size:]

    def plan(self, cfg: AttentionConfig, *, q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
             device: torch.device, scale: float, head_start: int = 0, backend: str | None = None,
             time_stages: bool = False) -> AttentionPlan:
        key = (cfg, q_heads, kv_heads, head_dim, dtype, scale, head_start, backend, time_stages)
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = AttentionPlan(
                cfg, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype, device=device, scale=scale,
                packed=self.packed, backend=backend, time_stages=time_stages, head_start=head_start)
        return plan

    def attend(self, query: torch.Tensor, kv_cache: torch.Tensor, out: torch.Tensor, cfg: AttentionConfig, *,
               layer: int | None, scale: float, head_start: int = 0, backend: str | None = None,
               time_stages: bool = False) -> tuple[AttentionPlan, PlanRun]:
        """Attention of the rows' queries over all their keys, written into ``out``.

        Args:
            query: ``[Tq_batch, Hq, D]``, the whole batch's queries (the rows' are sliced here).
            kv_cache: vLLM's ``[num_blocks, Hkv, block_size, 2·D]`` view, already holding the
                rows' new keys and values.
            out: like ``query`` (any strides with a unit last one); the rows' tokens are written.
            cfg, layer, scale, head_start, backend, time_stages: as in :func:`rrattention.rr_attention`.

        Returns:
            ``(plan, run)``: ``plan.stats(run)`` gives the call's statistics (a host synchronisation).
        """
        head_size = query.shape[-1]
        k, v = self.gather(kv_cache, head_size)
        q = query[self.token_start : self.token_end]
        plan = self.plan(cfg, q_heads=q.shape[1], kv_heads=k.shape[1], head_dim=head_size, dtype=q.dtype,
                         device=q.device, scale=scale, head_start=head_start, backend=backend, time_stages=time_stages)
        if k.dtype != q.dtype:  # an unquantised cache kept in another float type
            k, v = k.to(q.dtype), v.to(q.dtype)
        run = plan.run(q, k, v, layer, out=out[self.token_start : self.token_end])
        return plan, run


def call_record(rows: PagedRows, plan: AttentionPlan, run: PlanRun, layer: int | None, **extra) -> dict:
    """One JSON-able record of a call: per sequence ``Lq``, ``Lk`` and the dense reason (spec §6),
    the call's sparsity, per sequence and per (sequence, head) (``1 − selected / visible``), the
    selected blocks per (sequence, head), the backends."""
    stats: RRStats = plan.stats(run)
    chosen = stats.block_mask & stats.visible_mask
    selected = chosen.sum((1, 2, 3))
    visible = stats.visible_mask.sum((1, 2, 3)).clamp(min=1)
    return {
        **extra,
        "layer": layer,
        "q_lens": [qb - qa for qa, qb, _, _ in rows.packed.spans],
        "k_lens": [kb - ka for _, _, ka, kb in rows.packed.spans],
        "sparsity": stats.sparsity,
        "sparsity_per_seq": (1.0 - selected.double() / visible.double()).tolist(),
        "sparsity_per_head": stats.sparsity_per_head.tolist(),
        "selected_blocks_per_head": chosen.sum((2, 3)).tolist(),
        "dense_reasons": list(stats.dense_reasons),
        "backends": dict(stats.backends),
    }
