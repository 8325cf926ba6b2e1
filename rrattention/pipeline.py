"""The steps every entry point shares: resolve the per-layer config, apply the dense policies of
spec §6, pick a backend per stage, and run estimate → select → attend on validated tensors."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from . import backends, reference
from ._checks import AttentionShape, check_config, check_layer
from .config import AttentionConfig, RRConfig


@dataclass(frozen=True)
class Selection:
    """Output of stage 3: the dense mask and its compact form (``kv_*`` may be None: derive on demand)."""

    block_mask: torch.Tensor
    kv_count: torch.Tensor | None = None
    kv_index: torch.Tensor | None = None

    def compact(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kv_count is None:
            return reference.to_kv_index(self.block_mask)
        return self.kv_count, self.kv_index


class StageTimer:
    """Times named stages: CUDA events on a GPU (read after one synchronisation), else wall clock."""

    def __init__(self, device: torch.device):
        self._cuda = device.type == "cuda"
        self._spans: dict[str, list] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        if self._cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self._spans[name] = [start, end]

    def milliseconds(self) -> dict[str, float]:
        if self._cuda:
            torch.cuda.synchronize()
            return {n: s.elapsed_time(e) for n, (s, e) in self._spans.items()}
        return {n: (e - s) * 1e3 for n, (s, e) in self._spans.items()}


def _stage(timer: StageTimer | None, name: str):
    return timer.stage(name) if timer is not None else contextlib.nullcontext()


@dataclass
class Run:
    """What one padded-batch or packed call produced."""

    out: torch.Tensor
    block_mask: torch.Tensor | None  # None: dense call
    dense_reason: str | None
    backends: dict[str, str]
    timings_ms: dict[str, float] = field(default_factory=dict)


def dense_reason(cfg: AttentionConfig, layer: int | None, q_len: int, k_len: int) -> str | None:
    """Why a call must run dense attention under the policies of spec §6, or None if it runs sparse."""
    if cfg.method == "full":
        return "method 'full' is dense"
    if cfg.is_dense_layer(layer):
        return f"layer {layer} is in dense_layers"
    if q_len == 1:
        return "single query (Lq == 1, decode)"
    if k_len < cfg.min_sparse_len:
        return f"Lk={k_len} < min_sparse_len={cfg.min_sparse_len}"
    return None


def resolve(cfg: Any, layer: Any, *, any_method: bool = False) -> tuple[AttentionConfig, int | None]:
    cfg, layer = check_config(cfg, any_method=any_method), check_layer(layer)
    # Runs on every attention call: only build a new config when this layer has overrides.
    # (for_layer keeps dense_layers, so dense_reason still sees them.)
    return (cfg.for_layer(layer) if layer in cfg.layer_overrides else cfg), layer


def problem(q: torch.Tensor, shape: AttentionShape, cfg: AttentionConfig, varlen: bool = False) -> backends.Problem:
    return backends.Problem(
        device=q.device, block_size=cfg.block_size, dtype=q.dtype, head_dim=shape.head_dim,
        stride=getattr(cfg, "stride", None), group=shape.q_heads // shape.kv_heads, varlen=varlen,
    )


def _estimator_settings(cfg: RRConfig, layer: int | None, scale: float) -> dict:
    return dict(stride=cfg.stride, block_size=cfg.block_size, head_shift=cfg.head_shift, scale=scale,
                layer=layer or 0, seed=cfg.seed, exact_stride_causal=cfg.exact_stride_causal)


def _selection_settings(cfg: RRConfig) -> dict:
    return dict(block_size=cfg.block_size, tau=cfg.tau, selector=cfg.selector, force_sink=cfg.force_sink,
                force_diagonal=cfg.force_diagonal, dense_last_query_block=cfg.dense_last_query_block)


def estimate(backend: str, q, k, cfg: RRConfig, layer: int | None, scale: float, shape: AttentionShape) -> torch.Tensor:
    if backend == "triton":
        from .kernels.estimate import estimate_block_scores

        return estimate_block_scores(q, k, **_estimator_settings(cfg, layer, scale))
    offsets = reference.head_offsets(shape.q_heads, shape.kv_heads, cfg.stride, cfg.head_shift, layer=layer or 0, seed=cfg.seed)
    return reference.block_scores(
        q, k, stride=cfg.stride, block_size=cfg.block_size, offsets=offsets,
        exact_stride_causal=cfg.exact_stride_causal, scale=scale,
    )


def select(backend: str, scores: torch.Tensor, cfg: RRConfig, q_len: int, k_len: int) -> Selection:
    flags = _selection_settings(cfg)
    if backend == "triton":
        from .kernels.select import select_blocks

        return Selection(*select_blocks(scores, q_len=q_len, k_len=k_len, **flags))
    return Selection(reference.select_blocks(scores, q_len=q_len, k_len=k_len, **flags))


def attend(backend: str, q, k, v, selection: Selection, block_size: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from .kernels.block_sparse_attention import block_sparse_attention

        kv_count, kv_index = selection.compact()
        return block_sparse_attention(q, k, v, kv_count, kv_index, block_size=block_size, scale=scale)
    if backend == "flex":
        from .kernels.flex_attention import block_sparse_attention

        return block_sparse_attention(q, k, v, selection.block_mask, block_size=block_size, scale=scale)
    return reference.block_sparse_attention(q, k, v, selection.block_mask, block_size=block_size, scale=scale)


def run_attention(q, k, v, cfg: AttentionConfig, layer: int | None, scale: float, shape: AttentionShape,
                  backend: str | None = None, time_stages: bool = False) -> Run:
    """Padded batch through the policies of §6 and the chosen backends."""
    if backend is not None:
        backends.get(backend)  # a misspelt name fails even when the call runs dense
    timer = StageTimer(q.device) if time_stages else None
    reason = dense_reason(cfg, layer, shape.q_len, shape.k_len)
    if reason is not None:
        with _stage(timer, "attention"):
            out = reference.dense_causal_attention(q, k, v, scale=scale)
        return Run(out, None, reason, {"attention": "sdpa"}, timer.milliseconds() if timer else {})
    prob = problem(q, shape, cfg)
    if not isinstance(cfg, RRConfig):  # a baseline method: its own estimator, the shared kernel
        from . import methods

        with _stage(timer, "estimate"):
            selection = Selection(methods.for_config(cfg).estimate(q, k, cfg, layer, scale=scale, backend=backend))
        used = {"method": cfg.method, "attention": backends.choose("attention", prob, backend)}
        with _stage(timer, "attention"):
            out, _ = attend(used["attention"], q, k, v, selection, cfg.block_size, scale)
        return Run(out, selection.block_mask, None, used, timer.milliseconds() if timer else {})
    used = {"method": cfg.method, **{stage: backends.choose(stage, prob, backend) for stage in backends.STAGES}}
    with _stage(timer, "estimate"):
        scores = estimate(used["estimate"], q, k, cfg, layer, scale, shape)
    with _stage(timer, "select"):
        selection = select(used["select"], scores, cfg, shape.q_len, shape.k_len)
    with _stage(timer, "attention"):
        out, _ = attend(used["attention"], q, k, v, selection, cfg.block_size, scale)
    return Run(out, selection.block_mask, None, used, timer.milliseconds() if timer else {})


def run_attention_packed(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                         cfg: RRConfig, layer: int | None, scale: float, time_stages: bool = False) -> Run:
    """Packed sequences through the Triton kernels in one launch per stage, with the dense policies
    of spec §6 applied per sequence inside the selection kernel (no host synchronisation).

    ``Run.out`` is ``[Tq, Hq, D]``, ``Run.block_mask`` ``[N, Hq, nbq_max, nbk_max]``.
    """
    from .kernels.block_sparse_attention import block_sparse_attention
    from .kernels.estimate import estimate_block_scores
    from .kernels.select import select_blocks

    timer = StageTimer(q.device) if time_stages else None
    varlen = dict(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    with _stage(timer, "estimate"):
        scores = estimate_block_scores(
            q, k, **_estimator_settings(cfg, layer, scale), max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, **varlen,
        )
    min_sparse_len = torch.iinfo(torch.int32).max if cfg.is_dense_layer(layer) else cfg.min_sparse_len
    with _stage(timer, "select"):
        block_mask, kv_count, kv_index = select_blocks(
            scores, q_len=0, k_len=0, **_selection_settings(cfg), min_sparse_len=min_sparse_len,
            single_query_dense=True, **varlen,
        )
    with _stage(timer, "attention"):
        out, _ = block_sparse_attention(
            q, k, v, kv_count, kv_index, block_size=cfg.block_size, scale=scale, max_seqlen_q=max_seqlen_q, **varlen,
        )
    return Run(out, block_mask, None, {"method": cfg.method, **dict.fromkeys(backends.STAGES, "triton")},
               timer.milliseconds() if timer else {})
