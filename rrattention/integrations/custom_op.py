"""A framework hook's attention call as a ``torch.library`` custom op, so that ``torch.compile``
treats it as one opaque node of the graph (no graph break).

    torch.ops.rrattention.attention(q, k, v, mask, config_json, layer, scale, backend, head_start) -> [B, Lq, Hq, D]

``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]`` (GQA not repeated); ``mask`` None (causal) or the
framework's mask ``[B, 1, Lq, Lk]`` (bool "may attend", or additive); ``config_json`` a method's
config as ``ModelState.config_json`` writes it; ``layer`` −1 for none; ``backend`` "" for
dispatch's choice; ``head_start`` the global index of query head 0 (a tensor-parallel rank's
first head, spec §2). The op runs :func:`rrattention.integrations._calls.attention_call`: without a
mask the layers share one plan per layout, as in eager mode; with a mask each call plans (reads
the mask) itself; a mask that is not causal + padding runs dense SDPA with that mask. The fake
implementation gives the output's shape, dtype and strides.
"""

from __future__ import annotations

import functools
import json

import torch

from .. import methods
from ._calls import ModelState, allowed_mask, attention_call


@functools.lru_cache(maxsize=16)  # one state (and plan cache) per config, as a configured model has
def _state(config: str, backend: str) -> ModelState:
    data = json.loads(config)
    return ModelState(methods.make_config(data["method"], data["settings"]), backend or None)


def _dense_with_mask(q, k, v, mask, scale) -> torch.Tensor:
    """Dense SDPA with the framework's mask → ``[B, Lq, Hq, D]`` (what its own SDPA path computes)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).transpose(1, 2)


@torch.library.custom_op("rrattention::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, config: str, layer: int,
              scale: float, backend: str, head_start: int) -> torch.Tensor:
    state = _state(config, backend)
    if mask is not None:
        # A padding plan holds index tensors made here; under CUDA-graph capture (compile's
        # "reduce-overhead") nothing made inside the op may outlive it, so masked calls plan per call.
        state = ModelState(state.cfg, state.backend)
    out = attention_call(state, None if layer < 0 else layer, q, k, v, mask, lambda: allowed_mask(mask), scale,
                         lambda: _dense_with_mask(q, k, v, mask, scale), "sdpa", head_start=head_start)
    return out.contiguous()


@attention.register_fake
def _(q, k, v, mask, config, layer, scale, backend, head_start):
    return q.new_empty(q.shape[0], q.shape[2], q.shape[1], v.shape[-1])
