"""HF transformers backend: ``attn_implementation="rrattention"`` for any model whose attention
goes through ``transformers.AttentionInterface`` (Llama, Qwen2, Qwen3, Mistral, Gemma-style, …).

    import rrattention as rr
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=rr.hf.ATTN_IMPLEMENTATION)
    rr.hf.configure(model, rr.RRConfig(tau=0.95))
    with rr.hf.collect_stats(model) as stats:
        model.generate(**inputs)

Importing this module registers the name in ``AttentionInterface`` and, with transformers' SDPA
mask builder, in ``AttentionMaskInterface`` (without the latter a custom backend never receives
padding masks). No model code is patched: the configuration lives in a small state object set
as an attribute on each attention module, owned by the model.

Per call: no mask (no padding) → :func:`rrattention.rr_attention` on the batch; a causal + padding
mask → the valid tokens are packed and run through :func:`rrattention.rr_attention_varlen`, so
padding never influences selection or outputs; any other mask (sliding window, packed documents)
→ dense SDPA with that mask, recorded as a dense call. The policies of spec §6 decide dense vs
sparse: prefill of ``Lk ≥ min_sparse_len`` is sparse, decode (``Lq = 1``) dense, chunked prefill
(``1 < Lq < Lk``) sparse with bottom-right alignment.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..config import AttentionConfig, RRConfig
from ..stats import RRStats

ATTN_IMPLEMENTATION = "rrattention"
_STATE_ATTR = "rrattention_state"


def register() -> None:
    """Register ``"rrattention"`` with transformers (idempotent; done on import)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


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


@dataclass
class StatsCollector:
    """Records of the attention calls made while it is active (see :func:`collect_stats`)."""

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
class _ModelState:
    cfg: AttentionConfig
    backend: str | None = None
    collector: StatsCollector | None = None


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's attention modules: those transformers gives a ``layer_idx`` and KV grouping."""
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")]


def configure(model: torch.nn.Module, cfg: AttentionConfig | None = None, *, method: str | None = None,
              backend: str | None = None, **settings) -> torch.nn.Module:
    """Attach a method's settings to a loaded model and switch its attention to ``"rrattention"``.

    ``cfg`` is an :class:`~rrattention.RRConfig` or another method's config; or name the method
    and give its settings: ``configure(model, method="xattention", tau=0.9)`` (default method
    ``rrattention``). Per-layer overrides and ``dense_layers`` come with the config. Calling it
    again replaces the settings in place (no reload); ``model.set_attn_implementation("sdpa")``
    switches back. Returns the model.
    """
    from .. import methods

    if cfg is not None and (method is not None or settings):
        raise ValueError("pass either cfg or method=/settings, not both")
    if cfg is None:
        cfg = methods.make_config(method or "rrattention", settings)
    if not isinstance(cfg, AttentionConfig):
        raise TypeError(f"cfg must be an rrattention.RRConfig or another method's config, got {type(cfg).__name__}")
    if backend is not None:
        from .. import backends

        backends.get(backend)
    modules = attention_modules(model)
    if not modules:
        raise ValueError(
            f"model ({type(model).__name__}) has no attention module with `layer_idx` and `num_key_value_groups`; "
            "rrattention needs a transformers model that uses AttentionInterface"
        )
    previous = getattr(modules[0], _STATE_ATTR, None)
    state = _ModelState(cfg, backend, previous.collector if previous is not None else None)
    for module in modules:
        setattr(module, _STATE_ATTR, state)
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


@contextlib.contextmanager
def collect_stats(model: torch.nn.Module, *, timing: bool = False):
    """Collect a :class:`CallRecord` per attention call inside the ``with`` block.

    ``timing=True`` also times the estimate / select / attention stages (synchronising the GPU)."""
    modules = attention_modules(model)
    state = getattr(modules[0], _STATE_ATTR, None) if modules else None
    if state is None:
        configure(model)
        state = getattr(modules[0], _STATE_ATTR)
    collector = StatsCollector(timing=timing)
    previous, state.collector = state.collector, collector
    try:
        yield collector
    finally:
        state.collector = previous


def _state(module) -> _ModelState:
    state = getattr(module, _STATE_ATTR, None)
    return state if state is not None else _ModelState(RRConfig())


def _padding_layout(mask: torch.Tensor, q_len: int, k_len: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(query_valid [B, Lq], key_valid [B, Lk])`` if ``mask`` is bottom-right causal AND key
    padding (what transformers builds for padded batches), else None."""
    allowed = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0
    if mask.shape[1] != 1:
        return None
    key_valid = allowed[:, -1, :]  # the last query sees every valid key
    query_valid = key_valid[:, k_len - q_len :]
    causal = torch.ones(q_len, k_len, dtype=torch.bool, device=mask.device).tril(k_len - q_len)
    expected = causal[None] & key_valid[:, None, :]
    if not bool(((allowed == expected) | ~query_valid[:, :, None]).all()):
        return None
    return query_valid, key_valid


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``AttentionInterface`` function: query ``[B, Hq, Lq, D]``, key/value ``[B, Hkv, Lk, D]``
    (GQA not repeated) → ``([B, Lq, Hq, D], None)``."""
    from .. import api, varlen

    for feature in ("softcap", "s_aux"):
        if kwargs.get(feature) is not None:
            raise ValueError(f"rrattention does not support attention with `{feature}` (model {type(module).__name__})")
    state = _state(module)
    layer = getattr(module, "layer_idx", None)
    batch, heads, q_len, dim = query.shape
    k_len = key.shape[2]
    collect = state.collector is not None
    timing = collect and state.collector.timing
    common = dict(scale=scaling, layer=layer, backend=state.backend)
    stats = None
    layout = None if attention_mask is None else _padding_layout(attention_mask, q_len, k_len)
    if attention_mask is None:
        result = api.rr_attention(query, key, value, state.cfg, return_stats=collect, time_stages=timing, **common)
        out, stats = result if collect else (result, None)
        out = out.transpose(1, 2)
    elif layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        if collect:
            everything = torch.ones(batch, heads, 1, 1, dtype=torch.bool)
            stats = RRStats.from_masks(everything, everything, ["attention mask is not causal + padding"] * batch,
                                       {"attention": "sdpa"})
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
        state.collector.records.append(CallRecord(
            layer=layer, q_len=q_len, k_len=k_len, batch=batch, sparsity=stats.sparsity,
            sparsity_per_head=stats.sparsity_per_head.cpu(), dense_reasons=stats.dense_reasons,
            backends=dict(stats.backends), timings_ms=dict(stats.timings_ms),
        ))
    return out.contiguous(), None


register()
