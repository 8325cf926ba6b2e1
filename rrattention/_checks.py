"""Argument validation for the public API: every failure names the argument and what was expected."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

from .config import AttentionConfig, RRConfig

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class AttentionShape:
    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    k_len: int
    head_dim: int


def _check_tensor(name: str, x: Any, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor {layout}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty: every dimension of {layout} must be >= 1, got shape {tuple(x.shape)}")
    return x


def _check_same(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...], what: str) -> None:
    values = [getattr(t, what) for t in tensors]
    if any(v != values[0] for v in values):
        listing = ", ".join(f"{n}.{what}={v}" for n, v in zip(names, values))
        raise ValueError(f"{', '.join(names)} must share one {what}, got {listing}")


def check_float_tensors(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
    for name, t in zip(names, tensors):
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name}.dtype must be float16, bfloat16 or float32, got {t.dtype}")
    _check_same(names, tensors, "dtype")
    _check_same(names, tensors, "device")


def check_qkv(q: Any, k: Any, v: Any = None, *, packed: bool = False) -> AttentionShape:
    """Validate ``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]`` (or packed ``[T, H, D]``)."""
    if packed:
        layouts = ("[Tq, Hq, D]", "[Tk, Hkv, D]", "[Tk, Hkv, D]")
        ndim = 3
    else:
        layouts = ("[B, Hq, Lq, D]", "[B, Hkv, Lk, D]", "[B, Hkv, Lk, D]")
        ndim = 4
    names = ("q", "k") if v is None else ("q", "k", "v")
    tensors = tuple(_check_tensor(n, x, ndim, lay) for n, x, lay in zip(names, (q, k, v), layouts))
    check_float_tensors(names, tensors)
    if packed:
        q = q.unsqueeze(0).transpose(1, 2)
        k = k.unsqueeze(0).transpose(1, 2)
        v = None if v is None else v.unsqueeze(0).transpose(1, 2)
    batch, q_heads, q_len, dim = q.shape
    _, kv_heads, k_len, k_dim = k.shape
    if k.shape[0] != batch:
        raise ValueError(f"k must have the batch size of q ({batch}), got {k.shape[0]}")
    if q_heads % kv_heads != 0:
        raise ValueError(f"the number of query heads of q ({q_heads}) must be a multiple of the KV heads of k ({kv_heads})")
    if k_dim != dim:
        raise ValueError(f"k must have the head dim of q ({dim}), got {k_dim}")
    if v is not None and v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if not packed and q_len > k_len:
        raise ValueError(f"q must not be longer than k (queries are the last Lq of Lk keys), got Lq={q_len} > Lk={k_len}")
    return AttentionShape(batch, q_heads, kv_heads, q_len, k_len, dim)


def check_config(cfg: Any, *, any_method: bool = False) -> AttentionConfig:
    """``cfg``, default ``RRConfig()``; with ``any_method`` the config of any registered method."""
    if cfg is None:
        return RRConfig()
    if any_method and isinstance(cfg, AttentionConfig):
        return cfg
    if not isinstance(cfg, RRConfig):
        expected = "an rrattention.RRConfig or another method's config (rrattention.methods)" if any_method else "an rrattention.RRConfig"
        raise TypeError(f"cfg must be {expected}, got {type(cfg).__name__}")
    return cfg


def check_scale(scale: Any, head_dim: int) -> float:
    """Softmax scale, default ``1/√D``."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite float > 0 (or None for 1/sqrt(D)), got {scale!r}")
    return float(scale)


def check_length(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_head_start(head_start: Any) -> int:
    """The global index of the call's query head 0 (tensor parallelism), an int >= 0."""
    if isinstance(head_start, bool) or not isinstance(head_start, numbers.Integral):
        raise TypeError(f"head_start must be an int (the global index of query head 0), got "
                        f"{type(head_start).__name__} {head_start!r}")
    if head_start < 0:
        raise ValueError(f"head_start must be >= 0 (the global index of query head 0), got {head_start}")
    return int(head_start)


def check_layer(layer: Any) -> int | None:
    return None if layer is None else check_length("layer", layer, minimum=0)


def check_finite(**tensors: torch.Tensor) -> None:
    """Raise naming the first tensor that holds NaN or inf (one host sync per tensor on GPU)."""
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            bad = "NaN" if bool(torch.isnan(t).any()) else "inf"
            raise ValueError(f"{name} holds {bad} values; attention inputs must be finite")


def check_block_grid(
    name: str, x: Any, q_len: int, k_len: int, block_size: int, *,
    batch: int | None = None, heads: int | None = None, broadcast: bool = False,
) -> None:
    """``x`` must be ``[B, Hq, ceil(Lq/Bk), ceil(Lk/Bk)]``; B and Hq are checked when given
    (and may be 1 if ``broadcast``)."""
    _check_tensor(name, x, 4, "[B, Hq, ceil(Lq/block_size), ceil(Lk/block_size)]")
    grid = (-(-q_len // block_size), -(-k_len // block_size))
    if tuple(x.shape[2:]) != grid:
        raise ValueError(
            f"{name} must have shape [..., {grid[0]}, {grid[1]}] (ceil(Lq/block_size), ceil(Lk/block_size) "
            f"for Lq={q_len}, Lk={k_len}, block_size={block_size}), got {tuple(x.shape)}"
        )
    for dim, (got, want) in enumerate(zip(x.shape[:2], (batch, heads))):
        if want is not None and got != want and not (broadcast and got == 1):
            expected = f"{want} or 1" if broadcast else str(want)
            raise ValueError(f"{name}.shape[{dim}] must be {expected}, got {tuple(x.shape)}")
