"""What every framework hook shares: the per-model state, the call records, and one attention
call on torch tensors (sparse, packed around padding, or dense for any other mask).

A hook (``hf``, ``paddleformers``) converts its framework's arguments into torch tensors and a
boolean "may attend" mask, calls :func:`attention_call`, and converts the output back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..config import AttentionConfig, RRConfig
from ..stats import RRStats

STATE_ATTR = "rrattention_state"  # the attribute each attention layer of a configured model carries


@dataclass(frozen=True)
class CallRecord:
    """One attention call: where, how long, what was selected.

    ``sparsity`` follows spec §6 over the call's (sequence, head, query block) grid;
    ``sparsity_per_head`` is fp32 ``[B, Hq]`` on the CPU. ``timings_ms`` is filled when the
    collector was asked for timings.
    """

    layer: int | None
    q_len: int
    k_len: int
    batch: int
    sparsity: float
    sparsity_per_head: torch.Tensor
    dense_reasons: tuple[str | None, ...]
    backends: dict
    timings_ms: dict = field(default_factory=dict)

    @property
    def is_dense(self) -> bool:
        """Every sequence of the call ran dense attention."""
        return all(reason is not None for reason in self.dense_reasons)


@dataclass
class StatsCollector:
    """Records of the attention calls made while it is active (see ``collect_stats``)."""

    timing: bool = False
    records: list[CallRecord] = field(default_factory=list)

    def prefill_records(self) -> list[CallRecord]:
        return [r for r in self.records if r.q_len > 1]

    def layer_sparsity(self) -> dict[int | None, float]:
        """Mean sparsity of each layer's prefill calls."""
        by_layer: dict[int | None, list[float]] = {}
        for r in self.prefill_records():
            by_layer.setdefault(r.layer, []).append(r.sparsity)
        return {layer: sum(v) / len(v) for layer, v in sorted(by_layer.items(), key=lambda kv: (kv[0] is None, kv[0]))}

    def sparsity(self) -> float:
        """Prefill sparsity averaged over layers (each layer's calls averaged first), spec §6."""
        per_layer = self.layer_sparsity()
        return sum(per_layer.values()) / len(per_layer) if per_layer else float("nan")


@dataclass
class ModelState:
    """A model's method settings, forced backend and active collector, shared by its attention layers."""

    cfg: AttentionConfig
    backend: str | None = None
    collector: StatsCollector | None = None


def method_config(cfg: AttentionConfig | None, method: str | None, backend: str | None, settings: dict) -> AttentionConfig:
    """The config of ``configure(model, cfg | method=…, **settings)``, validated, the backend name checked."""
    from .. import backends, methods

    if cfg is not None and (method is not None or settings):
        raise ValueError("pass either cfg or method=/settings, not both")
    if cfg is None:
        cfg = methods.make_config(method or "rrattention", settings)
    if not isinstance(cfg, AttentionConfig):
        raise TypeError(f"cfg must be an rrattention.RRConfig or another method's config, got {type(cfg).__name__}")
    if backend is not None:
        backends.get(backend)
    return cfg


def attach(modules: Sequence, cfg: AttentionConfig, backend: str | None) -> ModelState:
    """One state for all of a model's attention layers; an active collector carries over."""
    previous = getattr(modules[0], STATE_ATTR, None)
    state = ModelState(cfg, backend, previous.collector if previous is not None else None)
    for module in modules:
        setattr(module, STATE_ATTR, state)
    return state


def module_state(module) -> ModelState:
    """The layer's state; an unconfigured layer runs the default ``RRConfig``."""
    state = getattr(module, STATE_ATTR, None)
    return state if state is not None else ModelState(RRConfig())


@contextlib.contextmanager
def collecting(modules: Sequence, configure_default: Callable[[], object], timing: bool):
    """Make a :class:`StatsCollector` the model's active one for the ``with`` block (configuring the
    model with the defaults first if it is not configured)."""
    state = getattr(modules[0], STATE_ATTR, None) if modules else None
    if state is None:
        configure_default()
        state = getattr(modules[0], STATE_ATTR)
    collector = StatsCollector(timing=timing)
    previous, state.collector = state.collector, collector
    try:
        yield collector
    finally:
        state.collector = previous


def allowed_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The bool "may attend" form of a framework's attention mask: bool as is, additive (0 where
    allowed, a large negative number elsewhere) compared with 0; None stays None (causal)."""
    if mask is None:
        return None
    return mask if mask.dtype == torch.bool else mask == 0


def padding_layout(allowed: torch.Tensor, q_len: int, k_len: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(query_valid [B, Lq], key_valid [B, Lk])`` if the bool mask ``allowed`` ``[B, 1, Lq, Lk]``
    is bottom-right causal AND key padding (what frameworks build for padded batches), else None."""
    if allowed.shape[1] != 1:
        return None
    allowed = allowed[:, 0]
    key_valid = allowed[:, -1, :]  # the last query sees every valid key
    query_valid = key_valid[:, k_len - q_len :]
    causal = torch.ones(q_len, k_len, dtype=torch.bool, device=allowed.device).tril(k_len - q_len)
    expected = causal[None] & key_valid[:, None, :]
    if not bool(((allowed == expected) | ~query_valid[:, :, None]).all()):
        return None
    return query_valid, key_valid


def attention_call(state: ModelState, layer: int | None, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   allowed: torch.Tensor | None, scaling: float | None, dense: Callable[[], torch.Tensor],
                   dense_name: str) -> torch.Tensor:
    """One call: query ``[B, Hq, Lq, D]``, key/value ``[B, Hkv, Lk, D]`` (GQA not repeated),
    ``allowed`` bool ``[B, 1, Lq, Lk]`` or None (causal, no padding) → ``[B, Lq, Hq, D]``.

    No mask → :func:`rrattention.rr_attention`; causal + padding → the valid tokens packed through
    :func:`rrattention.rr_attention_varlen`, so padding never influences selection or outputs; any
    other mask, or a mask on a call that spec §6 makes dense for every sequence (decode, a dense
    layer, ``Lk < min_sparse_len``) → ``dense()`` (the framework's own dense attention with the mask,
    ``[B, Lq, Hq, D]``), recorded as a dense call of backend ``dense_name``. Appends a
    :class:`CallRecord` when a collector is active.
    """
    from .. import api, varlen
    from ..pipeline import dense_reason, resolve

    batch, heads, q_len, _ = query.shape
    k_len = key.shape[2]
    collect = state.collector is not None
    timing = collect and state.collector.timing
    common = dict(scale=scaling, layer=layer, backend=state.backend)
    layout = reason = stats = None
    if allowed is not None:
        # With the padded shape's lengths a §6 policy that applies applies to every sequence; packing
        # would only run the varlen kernels to find that out.
        reason = dense_reason(resolve(state.cfg, layer, any_method=True)[0], layer, q_len, k_len)
        if reason is None:
            layout = padding_layout(allowed, q_len, k_len)
    if allowed is None:
        result = api.rr_attention(query, key, value, state.cfg, return_stats=collect, time_stages=timing, **common)
        out, stats = result if collect else (result, None)
        out = out.transpose(1, 2)
    elif layout is None:
        out = dense()
        if collect:
            everything = torch.ones(batch, heads, 1, 1, dtype=torch.bool)
            stats = RRStats.dense(everything, [reason or "attention mask is not causal + padding"] * batch, {"attention": dense_name})
    else:
        query_valid, key_valid = layout
        has_query = query_valid.any(1)  # a row that is all padding has nothing to compute
        q_counts, k_counts = query_valid.sum(1)[has_query], key_valid.sum(1)[has_query]
        cu = lambda n: torch.nn.functional.pad(n.cumsum(0), (1, 0)).to(torch.int32)  # noqa: E731
        packed = [x.transpose(1, 2)[valid & has_query[:, None]] for x, valid in ((query, query_valid), (key, key_valid), (value, key_valid))]
        result = varlen.rr_attention_varlen(
            *packed, cu(q_counts), cu(k_counts), int(q_counts.max()), int(k_counts.max()), state.cfg,
            return_stats=collect, time_stages=timing, **common,
        )
        out_packed, stats = result if collect else (result, None)
        out = query.new_zeros(batch, q_len, heads, value.shape[-1])
        out[query_valid & has_query[:, None]] = out_packed
    if collect:
        # A dense call (every decode step) is recorded without reading the GPU.
        per_head = torch.zeros(batch, heads) if stats.is_dense else stats.sparsity_per_head.cpu()
        state.collector.records.append(CallRecord(
            layer=layer, q_len=q_len, k_len=k_len, batch=batch, sparsity=stats.sparsity,
            sparsity_per_head=per_head, dense_reasons=stats.dense_reasons,
            backends=dict(stats.backends), timings_ms=dict(stats.timings_ms),
        ))
    return out
