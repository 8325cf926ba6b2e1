"""What every framework hook shares: the per-model state, the call records, and one attention
call on torch tensors (sparse, packed around padding, or dense for any other mask).

A hook (``hf``, ``paddleformers``) converts its framework's arguments into torch tensors and a
boolean "may attend" mask, calls :func:`attention_call`, and converts the output back.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .. import policy
from .._checks import check_qkv, check_scale
from ..config import AttentionConfig, RRConfig
from ..plan import AttentionPlan, PaddingPlan
from ..stats import padded_stats
from ..timing import StageTimer, stage

STATE_ATTR = "rrattention_state"  # the attribute each attention layer of a configured model carries
CUDA_GRAPHS = None  # the hooks' default for ``cuda_graphs``: replay short calls (AttentionPlan's None)


@dataclass(frozen=True)
class CallRecord:
    """One attention call: where, how long, what was selected.

    ``sparsity`` follows spec §6 over the call's (sequence, head, query block) grid;
    ``sparsity_per_head`` is fp32 ``[B, Hq]`` on the CPU. ``timings_ms`` is filled when the
    collector was asked for timings. ``causal`` is False for an encoder's call (a VLM's vision
    tower), which always runs dense and is left out of the prefill statistics. ``head_start`` is
    the global index of the call's query head 0 (a tensor-parallel rank's first head; 0 without
    tensor parallelism). ``block_mask`` (when the collector was asked for masks) is the bool
    ``[B, Hq, nbq, nbk]`` grid of computed blocks on the CPU (``RRStats.block_mask``: padded to
    the longest sequence for a padded batch; a dense call reports its causally visible blocks).
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
    causal: bool = True
    head_start: int = 0
    block_mask: torch.Tensor | None = None

    @property
    def is_dense(self) -> bool:
        """Every sequence of the call ran dense attention."""
        return all(reason is not None for reason in self.dense_reasons)


@dataclass
class StatsCollector:
    """Records of the attention calls made while it is active (see ``collect_stats``)."""

    timing: bool = False
    block_masks: bool = False
    records: list[CallRecord] = field(default_factory=list)

    def prefill_records(self) -> list[CallRecord]:
        """The causal (decoder) calls of more than one query: what spec §6's sparsity is about."""
        return [r for r in self.records if r.q_len > 1 and r.causal]

    def encoder_records(self) -> list[CallRecord]:
        """The non-causal calls (a VLM's vision tower), all dense."""
        return [r for r in self.records if not r.causal]

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


class PlanCache:
    """The plans of a model's recent forward passes, one per layout, so that a forward pass plans
    once (on its first attention call) and every later layer reuses the plan.

    A layout is the call's shapes, dtype, device and scale, and its mask: the framework builds
    one mask per forward pass and hands the same object to every layer, so a mask is matched by
    identity (through a weak reference: the cache never keeps a mask alive) and by its in-place
    version counter.
    """

    def __init__(self, size: int = 4):
        self._size = size
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()

    def lookup(self, key: tuple, mask: Any) -> Any:
        """The plan stored for ``key`` and this very mask object (unchanged since), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        ref, version, plan = entry
        if mask is None or (ref is not None and ref() is mask and getattr(mask, "_version", None) == version):
            self._entries.move_to_end(key)
            return plan
        return None

    def store(self, key: tuple, mask: Any, plan: Any) -> Any:
        """Keep ``plan`` for ``key`` and ``mask`` (the least recently used entry goes); returns it."""
        try:
            ref = None if mask is None else weakref.ref(mask)
        except TypeError:  # a mask type without weak references (some frameworks'): plan every call
            return plan
        self._entries[key] = (ref, getattr(mask, "_version", None), plan)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return plan


@dataclass
class ModelState:
    """A model's method settings, forced backend, active collector and plan cache, shared by its
    attention layers; ``tensor_parallel`` is ``(rank, size)`` of the mesh its layers are sharded on,
    when the hook has read it (None: not read yet); ``cuda_graphs``: the plans replay their sparse
    calls as CUDA graphs (:mod:`rrattention.graphs`; None: short calls only, as ``AttentionPlan``)."""

    cfg: AttentionConfig
    backend: str | None = None
    collector: StatsCollector | None = None
    plans: PlanCache = field(default_factory=PlanCache)
    tensor_parallel: tuple[int, int] | None = None
    cuda_graphs: bool | None = CUDA_GRAPHS

    config_json: str = field(init=False)  # cfg as the custom op's argument, made before any compiled call reads it
    # The unmasked causal calls (by :meth:`dense_layout`) that run the framework's dense attention
    # with nothing else to do: a hook sends the next ones there at once. The decision is a layer
    # setting's (spec §6 and the dense backend), so one layer's first call decides for the others.
    framework_dense: set = field(init=False, repr=False, default_factory=set)
    _setting_key: policy.SettingKeys = field(init=False, repr=False)

    def __post_init__(self):
        self.config_json = json.dumps({"method": self.cfg.method, "settings": self.cfg.to_dict()}, sort_keys=True)
        self._setting_key = policy.SettingKeys(self.cfg)

    def dense_layout(self, layer: int | None, query: torch.Tensor, key: torch.Tensor, scaling: float | None) -> tuple:
        """What an unmasked causal call's dense/sparse decision depends on."""
        return self._setting_key(layer), query.shape, key.shape, query.dtype, query.device, scaling

    def runs_framework_dense(self, layer: int | None, query: torch.Tensor, key: torch.Tensor,
                             scaling: float | None) -> bool:
        """An unmasked call of this layout runs the framework's dense attention and records nothing (its
        causal calls did so; a non-causal one always does)."""
        # A model whose calls have all run sparse builds no layout: its calls pay nothing here.
        return (self.collector is None and bool(self.framework_dense)
                and self.dense_layout(layer, query, key, scaling) in self.framework_dense)


# Decode adds a layout per step: the set is emptied when it reaches this size.
FRAMEWORK_DENSE_LAYOUTS = 1024


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


def attach(modules: Sequence, cfg: AttentionConfig, backend: str | None,
           tensor_parallel: tuple[int, int] | None = None, cuda_graphs: bool | None = CUDA_GRAPHS) -> ModelState:
    """One state for all of a model's attention layers; an active collector carries over."""
    if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
        raise TypeError(f"cuda_graphs must be True, False or None (replay short calls only), got {cuda_graphs!r}")
    previous = getattr(modules[0], STATE_ATTR, None)
    state = ModelState(cfg, backend, previous.collector if previous is not None else None,
                       tensor_parallel=tensor_parallel, cuda_graphs=cuda_graphs)
    for module in modules:
        setattr(module, STATE_ATTR, state)
    return state


def module_state(module) -> ModelState:
    """The layer's state; an unconfigured layer runs the default ``RRConfig``."""
    state = getattr(module, STATE_ATTR, None)
    return state if state is not None else ModelState(RRConfig())


@contextlib.contextmanager
def collecting(modules: Sequence, configure_default: Callable[[], object], timing: bool, block_masks: bool = False):
    """Make a :class:`StatsCollector` the model's active one for the ``with`` block (configuring the
    model with the defaults first if it is not configured)."""
    state = getattr(modules[0], STATE_ATTR, None) if modules else None
    if state is None:
        configure_default()
        state = getattr(modules[0], STATE_ATTR)
    collector = StatsCollector(timing=timing, block_masks=block_masks)
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


@dataclass(frozen=True)
class MaskedDense:
    """The plan of a mask that is not causal + padding: every call runs the framework's dense attention."""

    reason: str = "attention mask is not causal + padding"


# Bidirectional attention (a vision encoder's patches, per image or frame) is outside the spec's
# causal prefill: it runs the framework's exact dense attention, recorded with this reason.
NON_CAUSAL = MaskedDense("non-causal attention (encoder)")


def _plan(state: ModelState, query: torch.Tensor, key: torch.Tensor, q_shape: torch.Size, mask: Any,
          allowed: Callable[[], torch.Tensor | None], scaling: float | None, timing: bool, head_start: int):
    """The call's plan: from the cache, or built (validating the shapes once, reading a mask once)."""
    layout = (None if mask is None else id(mask), q_shape, key.shape, query.dtype, query.device, scaling, timing,
              head_start)
    plan = state.plans.lookup(layout, mask)
    if plan is not None:
        return plan
    batch, q_heads, q_len, head_dim = q_shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    check_qkv(query, key)
    scale = check_scale(scaling, head_dim)
    dims = dict(q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim, dtype=query.dtype, device=query.device,
                scale=scale, backend=state.backend, time_stages=timing, head_start=head_start,
                cuda_graphs=state.cuda_graphs)
    may_attend = allowed() if mask is not None else None
    if may_attend is None:
        plan = AttentionPlan(state.cfg, batch=batch, q_len=q_len, k_len=k_len, **dims)
    else:
        padding = padding_layout(may_attend, q_len, k_len)
        plan = MaskedDense() if padding is None else PaddingPlan(state.cfg, *padding, **dims)
    return state.plans.store(layout, mask, plan)


def _library_dense(plan, layer: int | None) -> bool:
    """The padded plan runs this layer's dense calls with a kernel of its own (not SDPA's)."""
    return isinstance(plan, AttentionPlan) and plan.dense_backend(layer) not in (None, "sdpa")


def attention_call(state: ModelState, layer: int | None, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   mask: Any, allowed: Callable[[], torch.Tensor | None], scaling: float | None,
                   dense: Callable[[], torch.Tensor], dense_name: str, causal: bool = True,
                   head_start: int = 0) -> torch.Tensor:
    """One call: query ``[B, Hq, Lq, D]``, key/value ``[B, Hkv, Lk, D]`` (GQA not repeated) →
    ``[B, Lq, Hq, D]``, contiguous when ``dense()``'s output is.

    ``mask`` is the framework's mask object as passed to the layer (None: causal, no padding);
    ``allowed()`` turns it into the bool "may attend" form ``[B, 1, Lq, Lk]`` when a plan is built.
    No mask → the padded plan (:class:`~rrattention.plan.AttentionPlan`); causal + padding → the
    valid tokens packed (:class:`~rrattention.plan.PaddingPlan`), so padding never influences
    selection or outputs; any other mask, and every call that spec §6 makes dense for every
    sequence (decode, a dense layer, ``Lk < min_sparse_len``) → ``dense()``, the framework's own
    dense attention ``[B, Lq, Hq, D]``, recorded as backend ``dense_name`` (a causal prefill call
    without a mask runs the plan's dense backend instead where that is not SDPA, FA4 on long calls,
    and always with ``1 < Lq < Lk``, which frameworks do not make: the library's bottom-right causal
    SDPA). ``causal=False`` (an encoder's bidirectional call) always runs ``dense()``.
    ``head_start`` is the global index of query head 0 (a tensor-parallel rank's first head):
    spec §2's offsets use global head indices. Appends a :class:`CallRecord` when a collector is
    active.
    """
    q_shape = query.shape
    batch, heads, q_len, _ = q_shape
    k_len = key.shape[2]
    collect = state.collector is not None
    plan = (_plan(state, query, key, q_shape, mask, allowed, scaling, collect and state.collector.timing, head_start)
            if causal else NON_CAUSAL)
    reason = plan.reason if isinstance(plan, MaskedDense) else plan.dense_reason(layer)
    # A dense prefill call without a mask runs through the plan where the plan's dense kernel is not
    # the framework's SDPA (FA4 for long calls) or the framework has no bottom-right causal SDPA
    # (1 < Lq < Lk). Decode stays on the framework's path: its layout changes every step.
    planned_dense = (reason is not None and mask is None and not isinstance(plan, MaskedDense) and q_len > 1
                     and (q_len < k_len or _library_dense(plan, layer)))
    if reason is not None and not collect and not planned_dense:
        if mask is None and causal:
            if len(state.framework_dense) >= FRAMEWORK_DENSE_LAYOUTS:
                state.framework_dense.clear()
            state.framework_dense.add(state.dense_layout(layer, query, key, scaling))
        return dense()  # the common dense call (decode, short prompts): nothing else to do or record
    stats = None
    if reason is None and isinstance(plan, PaddingPlan):
        out, run = plan.run(query, key, value, layer)
        stats = plan.stats(run) if collect else None
    elif reason is None:
        # Written straight into the [B, Lq, Hq, D] memory the framework expects: no transpose copy.
        # Without a collector nothing reads the selection: a graphed plan may replay without copies.
        out = query.new_empty(batch, q_len, heads, value.shape[-1])
        run = plan.run(query, key, value, layer, out=out.transpose(1, 2), keep_selection=collect)
        stats = plan.stats(run) if collect else None
    else:
        timer = StageTimer(query.device) if collect and state.collector.timing else None
        if planned_dense:
            out = query.new_empty(batch, q_len, heads, value.shape[-1])
            run = plan.run(query, key, value, layer, out=out.transpose(1, 2))
            used, timings = run.layer_plan.backends, run.timings_ms
        else:
            with stage(timer, "attention"):
                out = dense()
            used, timings = {"attention": dense_name}, timer.milliseconds() if timer else {}
        if collect:
            stats = padded_stats(None, batch, heads, q_len, k_len, state.cfg.layer_config(layer).block_size, reason, used,
                                 timings, "cpu")
    if collect:
        # A dense call (every decode step) is recorded without reading the GPU.
        per_head = torch.zeros(batch, heads) if stats.is_dense else stats.sparsity_per_head.cpu()
        state.collector.records.append(CallRecord(
            layer=layer, q_len=q_len, k_len=k_len, batch=batch, sparsity=stats.sparsity,
            sparsity_per_head=per_head, dense_reasons=stats.dense_reasons,
            backends=dict(stats.backends), timings_ms=dict(stats.timings_ms), causal=causal, head_start=head_start,
            block_mask=stats.block_mask.cpu() if state.collector.block_masks else None,
        ))
    return out
