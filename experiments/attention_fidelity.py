"""Attention-level fidelity: for chosen layers, the queries, keys and values of a full-attention
forward pass are captured (through ``AttentionInterface``, no patching); then, per head, the method's
block mask is scored by

* ``mass``: the exact attention probability that falls inside the selected blocks, averaged over
  queries — ``exp(LSE_selected − LSE_full)`` per query;
* ``out_rel_err``: ``‖out_sparse − out_full‖ / ‖out_full‖`` of the head's output;
* ``sparsity``: spec §6 over the head's (query block) rows.

Records hold the means over the chosen layers and heads, the worst head's mass, and the per-head
values (``[layer][head]`` lists in the order of ``layers``) that the sparsity heatmaps are drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

import rrattention as rr

from .base import ModelContext, corpus_window

CAPTURE = "rrattention_capture"


def _register_capture() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def capture(module, query, key, value, attention_mask, **kwargs):
        store = getattr(module, "rrattention_capture", None)
        if store is not None:
            store[module.layer_idx] = (query.detach(), key.detach(), value.detach(), kwargs.get("scaling"))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(CAPTURE, capture)
    AttentionMaskInterface.register(CAPTURE, sdpa_mask)


def capture_qkv(ctx: ModelContext, ids: torch.Tensor, layers: tuple[int, ...] | None) -> dict:
    """``{layer: (q [1, Hq, L, D], k, v [1, Hkv, L, D], scale)}`` from one full-attention forward
    (``layers=None``: every attention layer)."""
    _register_capture()
    modules = [m for m in rr.hf.attention_modules(ctx.model) if layers is None or m.layer_idx in layers]
    store: dict = {}
    for m in modules:
        m.rrattention_capture = store
    try:
        with ctx.full_attention(), torch.no_grad():
            ctx.model.set_attn_implementation(CAPTURE)
            ctx.model(ids.to(ctx.device), logits_to_keep=1)
    finally:
        for m in modules:
            del m.rrattention_capture
    missing = sorted(set(layers or ()) - set(store))
    if missing:
        raise ValueError(f"attention_fidelity: layers {missing} do not exist in the model")
    return store


@dataclass(frozen=True)
class AttentionFidelity:
    layers: tuple[int, ...] | str = field(default=(0,))  # layer indices, or "all"
    name: str = "attention_fidelity"
    primary_metric: str = "mass"
    higher_is_better: bool = True

    def __post_init__(self):
        if self.layers == "all":
            return
        if isinstance(self.layers, (str, bytes)) or not hasattr(self.layers, "__iter__") or not self.layers:
            raise ValueError(f"layers must be a non-empty list of layer indices or 'all', got {self.layers!r}")
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.layers):
            raise ValueError(f"layers must hold layer indices >= 0, got {list(self.layers)}")
        object.__setattr__(self, "layers", tuple(self.layers))

    def make_samples(self, ctx: ModelContext, length: int, n: int, seed: int) -> list[dict]:
        rng = np.random.default_rng([seed, length, 5])
        return [{"ids": corpus_window(ctx, length, rng)} for _ in range(n)]

    def evaluate(self, ctx: ModelContext, sample: dict) -> dict[str, float]:
        ids = torch.tensor(sample["ids"])[None]
        layers = None if self.layers == "all" else self.layers
        captured = ctx.cached(("qkv", hash(tuple(sample["ids"])), self.layers), lambda: capture_qkv(ctx, ids, layers))
        cfg = ctx.method_cfg
        masses, errors, sparsities = [], [], []
        for layer, (q, k, v, scale) in captured.items():
            q, k, v = q.float(), k.float(), v.float()
            length = q.shape[2]
            method = rr.methods.for_config(cfg)
            visible = rr.reference.visible_blocks(length, length, cfg.block_size, q.device)[None, None]
            dense = rr.dense_reason(cfg.for_layer(layer), layer, length, length, head_dim=q.shape[-1], q_heads=q.shape[1],
                                    kv_heads=k.shape[1]) is not None  # what a plan would decide
            mask = visible.expand(1, q.shape[1], -1, -1) if dense else method.estimate(q, k, cfg, layer, scale=scale)
            full, lse_full = rr.block_sparse_attention(q, k, v, visible, scale=scale, return_lse=True, block_size=cfg.block_size)
            out, lse = rr.block_sparse_attention(q, k, v, mask, scale=scale, return_lse=True, block_size=cfg.block_size)
            masses.append(torch.exp(lse - lse_full).mean(-1)[0])  # [Hq]
            errors.append(((out - full).norm(dim=(-2, -1)) / full.norm(dim=(-2, -1)))[0])
            sparsities.append(1 - (mask & visible).sum((-2, -1))[0].float() / visible.sum())
        mass, error, sparsity = (torch.stack(x) for x in (masses, errors, sparsities))  # [layers, Hq]
        return {"mass": float(mass.mean()), "mass_worst_head": float(mass.min()), "out_rel_err": float(error.mean()),
                "sparsity": float(sparsity.mean()), "layers": list(captured),
                "mass_per_head": _rounded(mass), "sparsity_per_head": _rounded(sparsity)}


def _rounded(values: torch.Tensor) -> list[list[float]]:
    return [[round(float(x), 5) for x in row] for row in values.cpu()]
