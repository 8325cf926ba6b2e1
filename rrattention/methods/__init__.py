"""Method registry: RRAttention and the baselines it is compared with, behind one interface.

    import rrattention as rr
    rr.methods.available()                     # ['full', 'rrattention', 'xattention', 'flexprefill', 'vertical_slash', 'a_shape']
    method = rr.methods.get("xattention")
    mask = method.estimate(q, k, method.config_class(tau=0.9))     # bool [B, Hq, nbq, nbk]
    out = rr.rr_attention(q, k, v, rr.methods.XAttentionConfig())  # any method's config runs the shared pipeline

Every method only builds a block mask; the dense policies (spec §6), the block-sparse attention
kernel, the statistics and the HF backend are shared, so methods differ by their estimator alone.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..config import AttentionConfig, RRConfig
from . import a_shape, flexprefill, full, rr, vertical_slash, xattention
from .a_shape import AShapeConfig
from .base import Method
from .flexprefill import FlexPrefillConfig
from .full import FullConfig
from .vertical_slash import VerticalSlashConfig
from .xattention import XAttentionConfig

_REGISTRY: dict[str, Method] = {
    m.METHOD.name: m.METHOD for m in (full, rr, xattention, flexprefill, vertical_slash, a_shape)
}


def available() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Method:
    if name not in _REGISTRY:
        raise ValueError(f"method must be one of {', '.join(map(repr, _REGISTRY))}, got {name!r}")
    return _REGISTRY[name]


def for_config(cfg: AttentionConfig) -> Method:
    """The method a config object belongs to."""
    return get(cfg.method)


def make_config(name: str, settings: Mapping[str, Any] | None = None) -> AttentionConfig:
    """``make_config("xattention", {"tau": 0.95})``: a validated config of the named method."""
    return get(name).config_class.from_dict(dict(settings or {}))


__all__ = [
    "AShapeConfig",
    "FlexPrefillConfig",
    "FullConfig",
    "Method",
    "RRConfig",
    "VerticalSlashConfig",
    "XAttentionConfig",
    "available",
    "for_config",
    "get",
    "make_config",
]
