"""PaddleFormers backend: ``config._attn_implementation = "rrattention"`` for any PaddleFormers model
whose attention goes through its ``AttentionInterface`` (Llama, Qwen2, Qwen3, …).

    import rrattention as rr
    from rrattention.integrations import paddleformers as rr_pf
    model = AutoModelForCausalLM.from_pretrained(path, convert_from_hf=True)
    rr_pf.configure(model, rr.RRConfig(tau=0.95))
    with rr_pf.collect_stats(model) as stats:
        model.generate(input_ids, max_new_tokens=20, decode_strategy="greedy_search")

Importing this module registers the name in ``paddleformers.nn.attention.interface.AttentionInterface``;
no model code is patched. Each call hands q/k/v to the torch implementation through DLPack (no
copy) and behaves as the transformers backend does (:mod:`rrattention.integrations.hf`): no mask →
sparse per the policies of spec §6 (prefill sparse from ``min_sparse_len``, decode dense); causal +
padding (also given as ``attn_mask_startend_row_indices``) → the valid tokens packed through the
varlen path; any other mask → PaddleFormers' own SDPA, recorded as a dense call.
"""

from __future__ import annotations

import paddle
import torch

from ..config import AttentionConfig
from ..paddle import paddle_output, torch_inputs
from ._calls import CallRecord, StatsCollector, allowed_mask, attach, attention_call, collecting, method_config, module_state

ATTN_IMPLEMENTATION = "rrattention"
__all__ = ["ATTN_IMPLEMENTATION", "CallRecord", "StatsCollector", "attention_forward", "attention_modules", "collect_stats",
           "configure", "register", "use_sdpa"]


def register() -> None:
    """Register ``"rrattention"`` with PaddleFormers (idempotent; done on import)."""
    from paddleformers.nn.attention.interface import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)


def attention_modules(model: paddle.nn.Layer) -> list[paddle.nn.Layer]:
    """The model's attention layers: those with a ``layer_idx`` and KV grouping."""
    return [m for m in model.sublayers(include_self=True) if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")]


def configure(model: paddle.nn.Layer, cfg: AttentionConfig | None = None, *, method: str | None = None,
              backend: str | None = None, **settings) -> paddle.nn.Layer:
    """Attach a method's settings to a loaded PaddleFormers model and switch its attention to
    ``"rrattention"`` (arguments as :func:`rrattention.hf.configure`). Calling it again replaces the
    settings in place; :func:`use_sdpa` switches back."""
    cfg = method_config(cfg, method, backend, settings)
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"model ({type(model).__name__}) has no attention layer with `layer_idx` and `num_key_value_groups`; "
                         "rrattention needs a PaddleFormers model that uses its AttentionInterface")
    attach(modules, cfg, backend)
    return _set_implementation(model, modules, ATTN_IMPLEMENTATION)


def use_sdpa(model: paddle.nn.Layer) -> paddle.nn.Layer:
    """Switch the model back to PaddleFormers' SDPA attention (the settings stay attached)."""
    return _set_implementation(model, attention_modules(model), "sdpa")


def _set_implementation(model: paddle.nn.Layer, modules: list[paddle.nn.Layer], name: str) -> paddle.nn.Layer:
    for module in modules:
        module.config._attn_implementation = name
        if hasattr(module, "attn_implementation"):  # ERNIE 4.5 reads its own copy, taken at construction
            module.attn_implementation = name
    model.config._attn_implementation = name
    return model


def collect_stats(model: paddle.nn.Layer, *, timing: bool = False):
    """Collect a :class:`CallRecord` per attention call inside the ``with`` block."""
    return collecting(attention_modules(model), lambda: configure(model), timing)


def _allowed(attention_mask, startend_row_indices, query: paddle.Tensor) -> torch.Tensor | None:
    """The bool "may attend" mask ``[B, 1 or H, Lq, Lk]`` of PaddleFormers' mask arguments (None: causal)."""
    if startend_row_indices is not None:
        from paddleformers.utils.masking_utils import _gen_from_sparse_attn_mask_indices

        indices = startend_row_indices.unsqueeze(-1) if startend_row_indices.ndim == 3 else startend_row_indices
        attention_mask = _gen_from_sparse_attn_mask_indices(indices, paddle.float32, indices.shape[-1] in (1, 2))
    if attention_mask is None:
        return None
    (mask,) = torch_inputs("bhld", attention_mask=attention_mask)
    return allowed_mask(mask)


def attention_forward(module, query, key, value, attention_mask=None, attn_mask_startend_row_indices=None, dropout=0.0,
                      sink=None, scaling=None, is_causal=None, **kwargs):
    """The ``AttentionInterface`` function: query ``[B, Hq, Lq, D]``, key/value ``[B, Hkv, Lk, D]``
    (paddle, GQA not repeated) → ``([B, Lq, Hq·D], None)``."""
    if sink is not None:
        raise ValueError(f"rrattention does not support attention sinks (`sink`, model {type(module).__name__})")
    if module.training:
        raise ValueError("rrattention is for inference (no gradients flow through it): call model.eval()")
    if is_causal is False and attention_mask is None and attn_mask_startend_row_indices is None:
        raise ValueError("rrattention is causal attention; got is_causal=False without a mask")
    batch, heads, q_len, dim = query.shape
    tq, tk, tv = torch_inputs("bhld", query=query, key=key, value=value)
    mask = attention_mask if attn_mask_startend_row_indices is None else attn_mask_startend_row_indices

    def dense() -> torch.Tensor:
        from paddleformers.nn.attention.sdpa_attention import sdpa_attention_forward

        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, attn_mask_startend_row_indices,
                                        dropout, None, scaling, is_causal)
        (out,) = torch_inputs("bhld", out=out)
        return out.reshape(batch, q_len, heads, -1)

    state, layer = module_state(module), getattr(module, "layer_idx", None)
    # A short prompt's calls run PaddleFormers' SDPA: after a layout's first call, nothing else runs.
    if mask is None and state.runs_framework_dense(layer, tq, tk, scaling):
        out = dense()
    else:
        out = attention_call(state, layer, tq, tk, tv, mask,
                             lambda: _allowed(attention_mask, attn_mask_startend_row_indices, query), scaling, dense,
                             "paddle sdpa")
    return paddle_output(out.reshape(batch, q_len, heads * out.shape[-1]), "bhld", qkv_like=False), None


register()
