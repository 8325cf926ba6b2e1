"""AttentionPlan: every decision about a forward pass's attention calls, made once.

A plan is built from a method's config and the sequence layout (a padded batch, a packed batch
with ``cu_seqlens``, or a padded batch with a padding mask), with the heads, head dim, dtype and
device of the calls. For each layer it freezes, on first use, the resolved config, the dense
decision of spec §6, the chosen backends and the method's prepared settings;
:meth:`AttentionPlan.run` is then a straight line of kernel launches: no validation, no policy,
no host synchronisation (with the Triton backend). The public functions validate and build a plan
per call; framework hooks build one per forward pass and reuse it in every layer.

    plan = AttentionPlan(cfg, q_heads=32, kv_heads=8, head_dim=128, dtype=torch.bfloat16, device=q.device,
                         scale=128**-0.5, batch=1, q_len=L, k_len=L)
    for layer in range(n_layers):
        out = plan.run(q, k, v, layer).out        # [B, Hq, Lq, D]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Hashable

import torch

from . import backends, methods, policy
from .backends import Packed, Problem, Selection, StageBackends
from .config import AttentionConfig
from .graphs import CallGraphs
from .methods.base import Method
from .stats import RRStats, packed_stats, padded_stats
from .timing import StageTimer, stage

# cuda_graphs=None replays layouts with less dense work than SmolLM2's 32K call. H200,
# results/prefill/h200/: SmolLM2's 16K prefill was 0.90× SDPA eager and 1.005× replayed on a slow
# host (host-bound), 1.07× and 1.04× on a fast one (GPU-bound: the copies cost device time); from 32K
# the pass is GPU-bound on any host and replaying only adds the copies (1.28× vs 1.31×).
GRAPH_MAX_DENSE_FLOPS = backends.causal_flops(1, 9, 32768, 32768, 64)


def dense_name(backend: backends.Backend) -> str:
    """A dense call's backend as the statistics report it (the reference's dense attention is SDPA)."""
    return "sdpa" if backend.name == "reference" else backend.name


@dataclass(frozen=True)
class LayerPlan:
    """What one layer's calls run: frozen on the layer's first call."""

    cfg: AttentionConfig  # resolved for the layer (overrides applied)
    layer: int | None
    method: Method
    dense_reason: str | None  # padded layout: why every sequence runs dense (None: sparse)
    ops: StageBackends | None  # None: dense, or a packed batch planned per sequence
    prepared: Any  # the method's settings (Method.prepare)
    backends: dict  # what ran each stage, as the statistics report it
    graph_key: Hashable | None = None  # what the layer's sparse call launches; equal keys share a CUDA graph
    dense: backends.Backend | None = None  # what runs the layer's dense calls (padded layout)


@dataclass(frozen=True)
class _Setting:
    """A layer setting's judgement, shared by the layers that have it: the resolved config, the
    method, and either the dense reason and dense backend (padded layout) or the sparse stages'
    backends (None for a packed batch planned per sequence)."""

    cfg: AttentionConfig
    method: Method
    reason: str | None
    dense: backends.Backend | None
    ops: StageBackends | None
    dense_name: str | None = field(init=False)  # read on every dense call of a hook

    def __post_init__(self):
        object.__setattr__(self, "dense_name", None if self.dense is None else dense_name(self.dense))


@dataclass
class PlanRun:
    """What one call produced. ``selection`` is None for a dense call (and for a packed batch run
    one sequence at a time: then ``sequence_runs`` holds each sequence's run), and for a sparse call
    made with ``keep_selection=False`` that replayed a graph of its own tensors (``kept`` False)."""

    out: torch.Tensor
    layer_plan: LayerPlan
    selection: Selection | None = None
    timings_ms: dict = field(default_factory=dict)
    sequence_runs: list["PlanRun"] | None = None

    @property
    def kept(self) -> bool:
        """The run has what its statistics need: a sparse layer's run without a selection has not."""
        return self.selection is not None or self.layer_plan.ops is None


class AttentionPlan:
    """The plan of the attention calls of one layout (see the module docstring).

    Args:
        cfg: any method's config (:mod:`rrattention.methods`); validated by the caller.
        q_heads, kv_heads, head_dim, dtype, device: what every call will pass.
        scale: softmax (and estimator logit) scale.
        batch, q_len, k_len: the padded layout ``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]``.
        packed: the packed layout ``q [Tq, Hq, D]``, ``k, v [Tk, Hkv, D]`` instead.
        backend: force a backend for the stages it implements.
        time_stages: time each stage of every run (synchronises the GPU).
        bind_backends: give the plan its own instance of each backend it uses (``Backend.bind``),
            shared by its layers: the Triton backend then caches its compiled kernel launches, so
            only a plan's first launch of each kernel pays Triton's argument binding. False: the
            shared backends and Triton's own launch path (for comparisons).
        head_start: the global index of the calls' query head 0, when they hold a slice of the
            model's heads (tensor parallelism: ``rank · q_heads``); spec §2's offsets use it.
        cuda_graphs: replay the sparse calls as CUDA graphs (:mod:`rrattention.graphs`): a layout's
            first call runs eagerly, the second is captured, later calls (in any layer with the same
            settings) copy their inputs in and replay. Costs a static copy of one call's inputs,
            output and temporaries for the plan's life; for host-bound forward passes. None: only
            for layouts whose dense causal work is below :data:`GRAPH_MAX_DENSE_FLOPS` (short calls,
            where the host's launch time matters; a packed layout sums its sequences).
    """

    def __init__(self, cfg: AttentionConfig, *, q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, scale: float, batch: int | None = None, q_len: int | None = None,
                 k_len: int | None = None, packed: Packed | None = None, backend: str | None = None,
                 time_stages: bool = False, bind_backends: bool = True, head_start: int = 0,
                 cuda_graphs: bool | None = False):
        self.cfg, self.scale, self.backend, self.time_stages = cfg, scale, backend, time_stages
        self.head_start, self.cuda_graphs = head_start, cuda_graphs
        self.q_heads, self.kv_heads, self.head_dim, self.dtype, self.device = q_heads, kv_heads, head_dim, dtype, device
        self.batch, self.q_len, self.k_len, self.packed = batch, q_len, k_len, packed
        if cuda_graphs is None:
            cuda_graphs = self._layout_flops() < GRAPH_MAX_DENSE_FLOPS
        self.graphs = CallGraphs() if cuda_graphs and device.type == "cuda" and not time_stages else None
        self._layers: dict[int | None, LayerPlan] = {}
        self._settings: dict[Hashable, _Setting] = {}
        self._setting_key = policy.SettingKeys(cfg)
        self._reasons = None if packed is not None else policy.LayerReasons(
            cfg, q_len, k_len, head_dim=head_dim, q_heads=q_heads, kv_heads=kv_heads)
        self._sequences: list[AttentionPlan] | None = None  # a packed batch planned per sequence
        self._bound: dict[str, backends.Backend] | None = {} if bind_backends else None

    def _layout_flops(self) -> float:
        """Dense causal FLOPs of one call of the layout (a packed one: its sequences' sum; inf when
        its offsets are not known on the host, which would take a synchronisation to read)."""
        if self.packed is None:
            return backends.causal_flops(self.batch, self.q_heads, self.q_len, self.k_len, self.head_dim)
        if self.packed.spans is None:
            return float("inf")
        return sum(backends.causal_flops(1, self.q_heads, qb - qa, kb - ka, self.head_dim)
                   for qa, qb, ka, kb in self.packed.spans)

    def problem(self, cfg: AttentionConfig, varlen: bool = False) -> Problem:
        """``varlen``: the packed batch as one call (its sequences' summed work, where known on the host)."""
        flops = self._layout_flops() if varlen else backends.causal_flops(self.batch, self.q_heads, self.q_len,
                                                                            self.k_len, self.head_dim)
        return Problem(device=self.device, block_size=cfg.block_size, dtype=self.dtype, head_dim=self.head_dim,
                       stride=getattr(cfg, "stride", None), group=self.q_heads // self.kv_heads, varlen=varlen,
                       dense_flops=None if flops == float("inf") else flops)

    def dense_reason(self, layer: int | None) -> str | None:
        """Why spec §6 runs ``layer``'s calls dense, or None (sparse; a packed layout decides per
        sequence). Judged without planning the layer: a dense call needs nothing else from the plan."""
        return None if self._reasons is None else self._reasons(layer)

    def layer_plan(self, layer: int | None) -> LayerPlan:
        planned = self._layers.get(layer)
        if planned is None:
            planned = self._layers[layer] = self._plan_layer(layer)
        return planned

    def dense_backend(self, layer: int | None) -> str | None:
        """The backend that runs ``layer``'s dense calls, named as the statistics name it (``"sdpa"``:
        the reference's), or None where the layer runs sparse. Read without planning the layer: a
        hook whose framework runs SDPA itself needs nothing else."""
        return self._setting(layer).dense_name

    def _setting(self, layer: int | None) -> _Setting:
        """What ``layer`` shares with every layer of the same settings, judged once for them all:
        a forward pass plans its model-wide settings once, not once per layer."""
        key = self._setting_key(layer)
        setting = self._settings.get(key)
        if setting is None:
            setting = self._settings[key] = self._judge(layer)
        return setting

    def _judge(self, layer: int | None) -> _Setting:
        cfg = self.cfg.layer_config(layer)
        method = methods.for_config(cfg)
        if self.packed is not None:
            return _Setting(cfg, method, None, None, self._packed_ops(cfg, method))
        reason = self.dense_reason(layer)
        if self.backend is not None:
            backends.get(self.backend)  # a misspelt name fails even when the call runs dense
        if reason is not None:
            return _Setting(cfg, method, reason, backends.choose(backends.DENSE, self.problem(cfg), self.backend), None)
        return _Setting(cfg, method, None, None, self._bind(backends.choose_all(self.problem(cfg), self.backend)))

    def _plan_layer(self, layer: int | None) -> LayerPlan:
        setting = self._setting(layer)
        cfg, method, ops = setting.cfg, setting.method, setting.ops
        if setting.dense is not None:
            return LayerPlan(cfg, layer, method, setting.reason, None, None, {"attention": setting.dense_name},
                             dense=setting.dense)
        if self.packed is None:
            prepared = method.prepare(cfg, layer, self.scale, head_start=self.head_start)
            return self._sparse_layer(cfg, layer, method, ops, prepared)
        if ops is None:
            return LayerPlan(cfg, layer, method, None, None, None, {})
        threshold = policy.dense_layer_threshold(cfg, layer, self.head_dim, self.q_heads, self.kv_heads)
        prepared = method.prepare(cfg, layer, self.scale, threshold, head_start=self.head_start)
        return self._sparse_layer(cfg, layer, method, ops, prepared)

    @staticmethod
    def _sparse_layer(cfg: AttentionConfig, layer, method: Method, ops: StageBackends, prepared) -> LayerPlan:
        names = _backend_names(method, ops)
        launches = method.graph_key(prepared)
        graph_key = None if launches is None else (method.name, launches, cfg.block_size, tuple(names.values()))
        return LayerPlan(cfg, layer, method, None, ops, prepared, names, graph_key)

    def _packed_ops(self, cfg: AttentionConfig, method: Method) -> StageBackends | None:
        """Backends that run the whole packed batch in one launch per stage, or None (per sequence)."""
        if not method.packed:
            return None
        try:
            ops = backends.choose_all(self.problem(cfg, varlen=True), self.backend)
        except ValueError:  # no backend, or not the one forced, takes the packed layout
            return None
        return self._bind(ops) if ops.varlen else None

    def _bind(self, ops: StageBackends) -> StageBackends:
        """The plan's own instances of the chosen backends (one per backend, shared by all layers)."""
        if self._bound is None:
            return ops
        for chosen in (ops.estimate, ops.select, ops.attention):
            if chosen.name not in self._bound:
                self._bound[chosen.name] = chosen.bind()
        return StageBackends(self._bound[ops.estimate.name], self._bound[ops.select.name], self._bound[ops.attention.name])

    def sequence_plans(self) -> list["AttentionPlan"]:
        """One padded plan per sequence of a packed batch (reads the offsets once)."""
        if self._sequences is None:
            self._sequences = [
                AttentionPlan(self.cfg, q_heads=self.q_heads, kv_heads=self.kv_heads, head_dim=self.head_dim,
                              dtype=self.dtype, device=self.device, scale=self.scale, batch=1, q_len=qb - qa,
                              k_len=kb - ka, backend=self.backend, time_stages=self.time_stages,
                              bind_backends=self._bound is not None, head_start=self.head_start,
                              cuda_graphs=self.cuda_graphs)
                for qa, qb, ka, kb in self.packed.host_spans()
            ]
            for sub in self._sequences:  # the sequences share the plan's backends (and their cached launches)
                sub._bound = self._bound
        return self._sequences

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int | None = None, *,
            out: torch.Tensor | None = None, keep_selection: bool = True) -> PlanRun:
        """One call of ``layer``: the layout's tensors in, ``PlanRun.out`` shaped like ``q``.

        ``out`` (optional, like ``q``, any strides with a unit last one) receives the result.
        ``keep_selection=False``: the caller reads neither ``PlanRun.selection`` nor the run's
        statistics, so a graphed plan may answer a call that comes again with the same ``q``, ``k``,
        ``v`` and ``out`` by replaying a graph captured on them, with no copies (:mod:`rrattention.graphs`).
        """
        planned = self.layer_plan(layer)
        timer = StageTimer(q.device) if self.time_stages else None
        if self.packed is not None and planned.ops is None:
            return self._run_per_sequence(q, k, v, planned, out)
        selection = None
        if planned.ops is None:
            with stage(timer, "attention"):
                out = planned.dense.dense_attend(q, k, v, scale=self.scale, out=out)
        elif self.graphs is not None and planned.graph_key is not None:
            out, selection = self.graphs.run(planned.graph_key, lambda *a: self._sparse(planned, *a), q, k, v, out,
                                             keep_selection)
        else:
            out, selection = self._sparse(planned, q, k, v, out, timer)
        return PlanRun(out, planned, selection, timer.milliseconds() if timer else {})

    def _sparse(self, planned: LayerPlan, q, k, v, out, timer: StageTimer | None = None) -> tuple[torch.Tensor, Selection]:
        selection = planned.method.select(planned.ops, q, k, planned.prepared, self.packed, timer)
        with stage(timer, "attention"):
            out, _ = planned.ops.attention.attend(q, k, v, selection, block_size=planned.cfg.block_size,
                                                  scale=self.scale, packed=self.packed, out=out)
        return out, selection

    def _run_per_sequence(self, q, k, v, planned: LayerPlan, out) -> PlanRun:
        out = torch.empty_like(q) if out is None else out
        runs = []
        for sub, (qa, qb, ka, kb) in zip(self.sequence_plans(), self.packed.host_spans()):
            one = sub.run(*(x.transpose(0, 1).unsqueeze(0) for x in (q[qa:qb], k[ka:kb], v[ka:kb])), planned.layer,
                          out=out[qa:qb].transpose(0, 1).unsqueeze(0))
            runs.append(one)
        timings: dict[str, float] = {}
        for one in runs:
            for name, ms in one.timings_ms.items():
                timings[name] = timings.get(name, 0.0) + ms
        return PlanRun(out, planned, None, timings, runs)

    def stats(self, run: PlanRun) -> RRStats:
        """The statistics of ``run`` (spec §6; reads the selection back: a host synchronisation)."""
        if not run.kept:
            raise ValueError("run was made with keep_selection=False and replayed without keeping its selection: "
                             "it has no statistics")
        planned = run.layer_plan
        if self.packed is None:
            mask = None if run.selection is None else run.selection.block_mask
            return padded_stats(mask, self.batch, self.q_heads, self.q_len, self.k_len, planned.cfg.block_size,
                                planned.dense_reason, planned.backends, run.timings_ms, self.device)
        spans = self.packed.host_spans()
        if run.sequence_runs is not None:
            masks = [None if r.selection is None else r.selection.block_mask for r in run.sequence_runs]
            reasons = [r.layer_plan.dense_reason for r in run.sequence_runs]
            used: dict[str, str] = {}
            for r in run.sequence_runs:
                used.update(r.layer_plan.backends)
        else:
            masks = [run.selection.block_mask[s : s + 1] for s in range(len(spans))]
            reasons = [policy.dense_reason(planned.cfg, planned.layer, qb - qa, kb - ka, head_dim=self.head_dim,
                                           q_heads=self.q_heads, kv_heads=self.kv_heads) for qa, qb, ka, kb in spans]
            used = planned.backends
        return packed_stats(spans, masks, reasons, planned.cfg.block_size, self.q_heads, used, run.timings_ms,
                            self.device)


def _backend_names(method: Method, ops: StageBackends) -> dict[str, str]:
    return {"method": method.name, **{s: getattr(ops, s).name for s in (*method.stages, "attention")}}


class PaddingPlan:
    """A padded batch with key padding: ``query_valid`` bool ``[B, Lq]``, ``key_valid`` ``[B, Lk]``
    (bottom-right causal among the valid tokens). The valid tokens of the rows that have queries are
    packed through a packed :class:`AttentionPlan` (``cuda_graphs`` as there), so padding never
    influences a selection or an output; padding queries output zeros. The gather and scatter
    indices and the packed offsets are computed here once (one host synchronisation), not per call.

    ``run`` takes ``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]`` and returns ``[B, Lq, Hq, D]``.
    """

    def __init__(self, cfg: AttentionConfig, query_valid: torch.Tensor, key_valid: torch.Tensor, *, q_heads: int,
                 kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, scale: float,
                 backend: str | None = None, time_stages: bool = False, head_start: int = 0,
                 cuda_graphs: bool | None = False):
        self.batch, self.q_len = query_valid.shape
        self.k_len = key_valid.shape[1]
        has_query = query_valid.any(1)  # a row that is all padding has nothing to compute
        q_rows, k_rows = query_valid & has_query[:, None], key_valid & has_query[:, None]
        self.q_index, self.k_index = q_rows.nonzero(as_tuple=True), k_rows.nonzero(as_tuple=True)
        q_counts, k_counts = q_rows.sum(1)[has_query].tolist(), k_rows.sum(1)[has_query].tolist()
        bq, bk = list(itertools.accumulate(q_counts, initial=0)), list(itertools.accumulate(k_counts, initial=0))
        cu = lambda bounds: torch.tensor(bounds, dtype=torch.int32, device=device)  # noqa: E731
        packed = Packed(cu(bq), cu(bk), max(q_counts), max(k_counts), tuple(zip(bq, bq[1:], bk, bk[1:])))
        self.inner = AttentionPlan(cfg, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype,
                                   device=device, scale=scale, packed=packed, backend=backend, time_stages=time_stages,
                                   head_start=head_start, cuda_graphs=cuda_graphs)
        self._reasons = policy.LayerReasons(cfg, self.q_len, self.k_len, head_dim=head_dim, q_heads=q_heads,
                                            kv_heads=kv_heads)

    def dense_reason(self, layer: int | None) -> str | None:
        """A policy of spec §6 that makes the whole call dense, judged on the padded lengths (one that
        applies applies to every sequence; packing would only run the kernels to find that out)."""
        return self._reasons(layer)

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int | None = None) -> tuple[torch.Tensor, PlanRun]:
        packed = [x.transpose(1, 2)[index] for x, index in ((q, self.q_index), (k, self.k_index), (v, self.k_index))]
        run = self.inner.run(*packed, layer)
        out = q.new_zeros(self.batch, self.q_len, q.shape[1], v.shape[-1])
        out[self.q_index] = run.out
        return out, run

    def stats(self, run: PlanRun) -> RRStats:
        """One row per batch row that has queries."""
        return self.inner.stats(run)
