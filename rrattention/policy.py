"""The dense policies of spec §6, in one place: every entry point and every layout asks here."""

from __future__ import annotations

from . import crossover
from .config import AttentionConfig


def min_sparse_len(cfg: AttentionConfig, head_dim: int, q_heads: int, kv_heads: int) -> int:
    """``cfg.min_sparse_len``, or the measured crossover for this shape when it is None."""
    if cfg.min_sparse_len is not None:
        return cfg.min_sparse_len
    return crossover.min_sparse_len(head_dim, q_heads, kv_heads)


def dense_reason(cfg: AttentionConfig, layer: int | None, q_len: int, k_len: int, *, head_dim: int | None = None,
                 q_heads: int | None = None, kv_heads: int | None = None) -> str | None:
    """Why a call must run dense attention under the policies of spec §6, or None if it runs sparse.

    ``head_dim``, ``q_heads`` and ``kv_heads`` are needed when ``cfg.min_sparse_len`` is None (the
    measured crossover depends on them).
    """
    if cfg.method == "full":
        return "method 'full' is dense"
    if cfg.is_dense_layer(layer):
        return f"layer {layer} is in dense_layers"
    if q_len == 1:
        return "single query (Lq == 1, decode)"
    if cfg.min_sparse_len is None and None in (head_dim, q_heads, kv_heads):
        raise ValueError("dense_reason needs head_dim, q_heads and kv_heads when cfg.min_sparse_len is None "
                         "(the measured crossover depends on the shape)")
    threshold = min_sparse_len(cfg, head_dim, q_heads, kv_heads)
    if k_len < threshold:
        measured = "" if cfg.min_sparse_len is not None else f" (measured crossover for D={head_dim}, {q_heads}/{kv_heads} heads)"
        return f"Lk={k_len} < min_sparse_len={threshold}{measured}"
    return None


def dense_layer_threshold(cfg: AttentionConfig, layer: int | None, head_dim: int, q_heads: int, kv_heads: int) -> int:
    """The per-sequence key length below which a packed sequence runs dense: a dense layer (or the
    method ``full``) runs every sequence dense."""
    if cfg.method == "full" or cfg.is_dense_layer(layer):
        return 2**31 - 1
    return min_sparse_len(cfg, head_dim, q_heads, kv_heads)


MODEL_WIDE = object()  # the setting key of the layers without a setting of their own


class SettingKeys:
    """The key of a layer's setting: the layer itself where it is judged on its own (a dense layer,
    a layer override), else :data:`MODEL_WIDE`, shared by every other layer."""

    def __init__(self, cfg: AttentionConfig):
        self._own = frozenset(cfg.dense_layers) | frozenset(cfg.layer_overrides)

    def __call__(self, layer: int | None):
        return layer if layer in self._own else MODEL_WIDE


class LayerReasons:
    """:func:`dense_reason` of every layer for one call shape, judged once per distinct layer
    setting: the layers without overrides that are not dense layers share one judgement, so a
    forward pass whose calls all run dense asks the policy once, not once per layer."""

    def __init__(self, cfg: AttentionConfig, q_len: int, k_len: int, *, head_dim: int, q_heads: int, kv_heads: int):
        self._cfg, self._lengths = cfg, (q_len, k_len)
        self._dims = dict(head_dim=head_dim, q_heads=q_heads, kv_heads=kv_heads)
        self._setting = SettingKeys(cfg)
        self._reasons: dict = {}

    def __call__(self, layer: int | None) -> str | None:
        key = self._setting(layer)
        try:
            return self._reasons[key]
        except KeyError:
            reason = self._reasons[key] = dense_reason(self._cfg.layer_config(layer), layer, *self._lengths, **self._dims)
            return reason

