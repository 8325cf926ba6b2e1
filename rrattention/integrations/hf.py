"""HF transformers backend: ``attn_implementation="rrattention"`` for any model whose attention
goes through ``transformers.AttentionInterface`` (Llama, Qwen2, Qwen3, Mistral, Gemma-style, …).

    import rrattention as rr
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=rr.hf.ATTN_IMPLEMENTATION)
    rr.hf.configure(model, rr.RRConfig(tau=0.95))
    with rr.hf.collect_stats(model) as stats:
        model.generate(**inputs)

Importing this module registers the name in ``AttentionInterface`` and, with transformers' SDPA
mask builder (:func:`causal_or_sdpa_mask`), in ``AttentionMaskInterface`` (without the latter a
custom backend never receives padding masks). No model code is patched: the configuration lives in a small state object set
as an attribute on each attention module, owned by the model.

Per call: no mask (no padding) → :func:`rrattention.rr_attention` on the batch; a causal + padding
mask → the valid tokens are packed and run through :func:`rrattention.rr_attention_varlen`, so
padding never influences selection or outputs; any other mask (sliding window, packed documents)
→ dense SDPA with that mask, recorded as a dense call. The policies of spec §6 decide dense vs
sparse: prefill of ``Lk ≥ min_sparse_len`` is sparse, decode (``Lq = 1``) dense, chunked prefill
(``1 < Lq < Lk``) sparse with bottom-right alignment.

Vision-language models send their vision encoder's attention through the same name, with
``is_causal=False`` (one call per image or frame group; Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SigLIP,
CLIP, InternVL, SmolVLM): every non-causal call runs transformers' SDPA exactly, with its mask, and
is recorded dense (``CallRecord.causal`` False), so only the language model's causal prefill goes
sparse.

Under transformers' tensor parallelism (``from_pretrained(..., tp_plan="auto")`` in every process
of ``torchrun``) each rank's calls hold a column-wise slice of the heads; the hook reads the rank
from the TP mesh of the layer's DTensor parameters and samples with global head indices
(:mod:`rrattention.integrations.tensor_parallel`), so the ranks select exactly one device's blocks.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import causal_mask_function, sdpa_mask

from . import custom_op  # noqa: F401  (registers torch.ops.rrattention.attention)
from .._checks import check_scale
from ..config import AttentionConfig
from ._calls import (CUDA_GRAPHS, CallRecord, StatsCollector, allowed_mask, attach, attention_call, collecting,
                     method_config, module_state)
from .tensor_parallel import NOT_SHARDED, HeadShard, head_shard, replicated_kv_reason

ATTN_IMPLEMENTATION = "rrattention"
__all__ = ["ATTN_IMPLEMENTATION", "CallRecord", "StatsCollector", "attention_forward", "attention_modules", "collect_stats",
           "configure", "encoder_attention_modules", "register", "tensor_parallel_rank"]


def register() -> None:
    """Register ``"rrattention"`` with transformers (idempotent; done on import)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, causal_or_sdpa_mask)


def causal_or_sdpa_mask(*args, **kwargs):
    """transformers' SDPA mask, except that a plain causal call without padding gets None.

    The mask function runs once per forward pass. With no 2-D padding mask, the causal mask
    function and ``Lq == Lk`` (or one query), the mask holds nothing the hook does not know:
    returning None spares building and reading an ``[B, 1, Lq, Lk]`` tensor, also where
    transformers would build it anyway (some versions do while a CUDA graph is being captured,
    when reading it would break the capture). Every other call gets ``sdpa_mask``'s mask.
    """
    # transformers passes keywords only: binding them to the signature (~50 µs a pass) is the rare path
    if args:
        bound = inspect.signature(sdpa_mask).bind(*args, **kwargs)
        bound.apply_defaults()
        given = bound.arguments
    else:
        given = {**_defaults(sdpa_mask), **kwargs}
    if "q_length" in given:
        q_len = given["q_length"]
    elif isinstance(given.get("cache_position"), torch.Tensor):  # transformers before q_length
        q_len = given["cache_position"].shape[0]
    else:
        q_len = None
    plain_causal = given.get("mask_function") is causal_mask_function and given.get("local_size") is None
    if plain_causal and given.get("attention_mask") is None and q_len is not None and q_len in (1, given.get("kv_length")):
        return None
    return sdpa_mask(*args, **kwargs)


@functools.cache
def _defaults(fn) -> dict:
    """The default values of ``fn``'s parameters (a function of the installed transformers: fixed)."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def _is_decoder_attention(module: torch.nn.Module) -> bool:
    return hasattr(module, "layer_idx") and hasattr(module, "num_key_value_groups")


def _is_encoder_attention(module: torch.nn.Module) -> bool:
    return getattr(module, "is_causal", None) is False and not hasattr(module, "layer_idx")


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's attention modules: those transformers gives a ``layer_idx`` and KV grouping."""
    return [m for m in model.modules() if _is_decoder_attention(m)]


def encoder_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's bidirectional attention modules (a VLM's vision tower): ``is_causal`` False, no ``layer_idx``."""
    return [m for m in model.modules() if _is_encoder_attention(m)]


def configure(model: torch.nn.Module, cfg: AttentionConfig | None = None, *, method: str | None = None,
              backend: str | None = None, cuda_graphs: bool | None = CUDA_GRAPHS, **settings) -> torch.nn.Module:
    """Attach a method's settings to a loaded model and switch its attention to ``"rrattention"``.

    ``cfg`` is an :class:`~rrattention.RRConfig` or another method's config; or name the method
    and give its settings: ``configure(model, method="xattention", tau=0.9)`` (default method
    ``rrattention``). Per-layer overrides and ``dense_layers`` come with the config. Calling it
    again replaces the settings in place (no reload); ``model.set_attn_implementation("sdpa")``
    switches back. ``cuda_graphs`` replays each forward pass's sparse calls as CUDA graphs
    (:mod:`rrattention.graphs`: the host then issues a copy, a replay and a copy per layer instead
    of every kernel; it pays where a pass is host-bound, and holds one call's buffers per layout):
    None (default) for calls with less dense work than ``rrattention.plan.GRAPH_MAX_DENSE_FLOPS``
    (SmolLM2's 32K call), True for every sparse call, False never. Returns the model.
    """
    cfg = method_config(cfg, method, backend, settings)
    modules, encoders = [], []
    for module in model.modules():  # one walk: a large model has thousands of modules
        if _is_decoder_attention(module):
            modules.append(module)
        elif _is_encoder_attention(module):
            encoders.append(module)
    if not modules:
        raise ValueError(
            f"model ({type(model).__name__}) has no attention module with `layer_idx` and `num_key_value_groups`; "
            "rrattention needs a transformers model that uses AttentionInterface"
        )
    # one state: encoder calls are recorded too
    attach(modules + encoders, cfg, backend, tensor_parallel_rank(modules[0]), cuda_graphs)
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


def collect_stats(model: torch.nn.Module, *, timing: bool = False, block_masks: bool = False):
    """Collect a :class:`CallRecord` per attention call inside the ``with`` block.

    ``timing=True`` also times the estimate / select / attention stages (synchronising the GPU);
    ``block_masks=True`` keeps each call's block mask (``CallRecord.block_mask``, on the CPU)."""
    return collecting(attention_modules(model), lambda: configure(model), timing, block_masks)


def tensor_parallel_rank(module: torch.nn.Module) -> tuple[int, int]:
    """``(rank, size)`` in the tensor-parallel mesh that the module's parameters are sharded on, ``(0, 1)`` without.

    transformers' ``tp_plan`` makes the sharded parameters DTensors on its ``"tp"`` mesh (one
    dimension); a multi-dimensional mesh counts only its ``"tp"`` dimension.
    """
    if not torch.distributed.is_available():
        return 0, 1
    from torch.distributed.tensor import DTensor

    for param in module.parameters():
        if isinstance(param, DTensor):
            mesh = param.device_mesh
            names = tuple(mesh.mesh_dim_names or ())
            if "tp" in names:
                dim = names.index("tp")
            elif mesh.ndim == 1 and not names:
                dim = 0
            else:  # a mesh without a tensor-parallel dimension (FSDP alone): heads are not split
                continue
            return mesh.get_local_rank(dim), mesh.size(dim)
    return 0, 1


def _model_heads(module, layer: int | None) -> tuple[int, int]:
    """The model's query and KV heads in this layer, from the module's config."""
    config = getattr(module, "config", None)
    q_heads = getattr(config, "num_attention_heads", None)
    if q_heads is None:
        raise ValueError(f"rrattention under tensor parallelism needs the model's head count "
                         f"({type(module).__name__}.config.num_attention_heads) to place the rank's heads")
    kv_heads = getattr(config, "num_key_value_heads", None) or q_heads
    pick = lambda n: n[layer or 0] if isinstance(n, (list, tuple)) else n  # noqa: E731  (per-layer head counts)
    return pick(q_heads), pick(kv_heads)


def _head_shard(module, state, layer: int | None, query: torch.Tensor, key: torch.Tensor) -> HeadShard:
    """The call's heads within the model's (spec §2 offsets use the global head index)."""
    rank, size = state.tensor_parallel or tensor_parallel_rank(module)
    if size == 1:
        return NOT_SHARDED
    q_heads, kv_heads = query.shape[1], key.shape[1]
    total_q, total_kv = _model_heads(module, layer)
    shard = head_shard(rank=rank, size=size, local_q_heads=q_heads, local_kv_heads=kv_heads, total_q_heads=total_q,
                       total_kv_heads=total_kv)
    if shard.kv_replicated:
        reason = replicated_kv_reason([getattr(state.cfg.layer_config(layer), "head_shift", None)], size, total_kv)
        if reason is not None:
            raise ValueError(f"rrattention ({type(module).__name__}, layer {layer}): {reason}")
    return shard


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``AttentionInterface`` function: query ``[B, Hq, Lq, D]``, key/value ``[B, Hkv, Lk, D]``
    (GQA not repeated) → ``([B, Lq, Hq, D], None)``."""
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None or kwargs.get("cu_seq_lens_q") is not None:
        _unsupported(module, kwargs)

    state = module_state(module)
    layer = getattr(module, "layer_idx", None)
    # A short prompt's calls run transformers' SDPA: after a layout's first call, nothing else runs
    # (the pass is host-bound there, and every microsecond of every layer shows in its time). An
    # encoder's unmasked call of such a layout runs the same SDPA with its own is_causal.
    if (attention_mask is None and state.runs_framework_dense(layer, query, key, scaling)
            and not torch.compiler.is_compiling()):
        return _sdpa(module, query, key, value, None, scaling, dropout, kwargs), None
    # the call's own flag first (as transformers' SDPA reads it): vision encoders pass is_causal=False
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else bool(causal)
    # an encoder's call runs dense: its heads' place in the model does not matter
    head_start = _head_shard(module, state, layer, query, key).head_start if causal else 0
    if not torch.compiler.is_compiling():
        return _eager_forward(module, state, layer, causal, head_start, query, key, value, attention_mask, scaling,
                              dropout, kwargs), None
    if state.collector is None and not causal:
        return _sdpa(module, query, key, value, attention_mask, scaling, dropout, kwargs), None
    if state.collector is None:
        # One opaque node of the compiled graph (integrations/custom_op.py): no graph break.
        out = torch.ops.rrattention.attention(query, key, value, attention_mask, state.config_json,
                                              -1 if layer is None else layer, check_scale(scaling, query.shape[-1]),
                                              state.backend or "", head_start)
        return out, None
    return _eager_forward_outside_graph(module, state, layer, causal, head_start, query, key, value, attention_mask,
                                        scaling, dropout, kwargs), None


def _unsupported(module, kwargs: dict):
    # transformers passes cu_seq_lens to flash backends only
    feature = next(f for f in ("softcap", "s_aux", "cu_seq_lens_q") if kwargs.get(f) is not None)
    raise ValueError(f"rrattention does not support attention with `{feature}` (model {type(module).__name__})")


def _sdpa(module, query, key, value, attention_mask, scaling, dropout, kwargs: dict):
    """transformers' own SDPA attention ``[B, Lq, Hq, D]``, with the call's mask and flags."""
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)[0]


def _eager_forward(module, state, layer, causal, head_start, query, key, value, attention_mask, scaling, dropout,
                   kwargs: dict):
    def dense():
        return _sdpa(module, query, key, value, attention_mask, scaling, dropout, kwargs)

    # contiguous as transformers' SDPA returns it (attention_call's own outputs are)
    return attention_call(state, layer, query, key, value, attention_mask, lambda: allowed_mask(attention_mask),
                          scaling, dense, "sdpa", causal=causal, head_start=head_start)


# Statistics are read on the host: a compiled graph that collects them breaks here and runs this eagerly.
_eager_forward_outside_graph = torch.compiler.disable(_eager_forward)


register()
