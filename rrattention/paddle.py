"""RRAttention on PaddlePaddle tensors: the public functions of :mod:`rrattention` taking and
returning ``paddle.Tensor``.

    import rrattention.paddle as rrp
    out = rrp.rr_attention(q, k, v, rr.RRConfig(tau=0.95), layout="blhd")   # q [B, L, Hq, D]

Tensors cross to torch and back through DLPack: no copy, the same memory, the same algorithm and
the same kernels (the reference on CPU, Triton on CUDA). ``layout`` says how q/k/v and the output
are laid out: ``"bhld"`` (``[B, H, L, D]``, the torch API's layout) or ``"blhd"`` (``[B, L, H, D]``,
Paddle's ``scaled_dot_product_attention`` and flash-attention layout); non-contiguous views are fine.
Block scores and masks are ``[B, Hq, nbq, nbk]`` and the log-sum-exp ``[B, Hq, Lq]`` in both layouts.
Statistics (``return_stats``) are :class:`rrattention.RRStats` with torch tensors.

On CUDA, work queued on Paddle's stream is finished before torch reads the inputs, and torch's
stream before Paddle gets the outputs. Verified on CPU only: no Paddle 3.x GPU build exists on PyPI.
"""

from __future__ import annotations

import numbers
from typing import Any

import paddle
import torch

from . import api
from .config import AttentionConfig, RRConfig
from .stats import RRStats

LAYOUTS = ("bhld", "blhd")


def to_torch(name: str, x: Any) -> torch.Tensor:
    """A zero-copy torch view of the paddle tensor ``x`` (argument ``name`` in errors); gradients
    do not flow through it (the kernels are for inference)."""
    if not isinstance(x, paddle.Tensor):
        raise TypeError(f"{name} must be a paddle.Tensor, got {type(x).__name__}")
    return torch.from_dlpack(x.detach())


def to_paddle(x: torch.Tensor) -> paddle.Tensor:
    """A zero-copy paddle view of the torch tensor ``x`` (made contiguous first if it is not)."""
    return paddle.from_dlpack(x.contiguous())


def _check_layout(layout: Any) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'bhld' ([B, H, L, D]) or 'blhd' ([B, L, H, D]), got {layout!r}")
    return layout


def torch_inputs(layout: str, **tensors) -> list[torch.Tensor]:
    """torch views of the named paddle tensors (names as in errors), q/k/v turned to ``[B, H, L, D]``;
    on CUDA, after Paddle's queued work."""
    _check_layout(layout)
    out = []
    for name, x in tensors.items():
        t = to_torch(name, x)
        if layout == "blhd" and name in ("q", "k", "v"):
            if t.dim() != 4:
                raise ValueError(f"{name} must be 4-D [B, L, H, D] with layout='blhd', got shape {tuple(t.shape)}")
            t = t.transpose(1, 2)
        out.append(t)
    if any(t.is_cuda for t in out):
        paddle.device.synchronize()  # Paddle's queued writes to the inputs land before torch reads them
    return out


def paddle_output(x: torch.Tensor, layout: str, *, qkv_like: bool = True) -> paddle.Tensor:
    """A paddle tensor of the torch result ``x`` (``[B, H, L, D]`` turned to ``layout`` when
    ``qkv_like``); on CUDA, after torch's queued work."""
    if layout == "blhd" and qkv_like:
        x = x.transpose(1, 2)  # made contiguous by to_paddle: Paddle kernels expect dense outputs
    if x.is_cuda:
        torch.cuda.current_stream(x.device).synchronize()  # torch's kernels finish before Paddle reads
    return to_paddle(x)


def rr_attention(q, k, v, cfg: AttentionConfig | None = None, *, layout: str = "bhld", scale: float | None = None,
                 layer: int | None = None, return_stats: bool = False, backend: str | None = None):
    """:func:`rrattention.rr_attention` on paddle tensors.

    Args:
        q: ``[B, Hq, Lq, D]`` (``layout="bhld"``) or ``[B, Lq, Hq, D]`` (``"blhd"``), fp16/bf16/fp32.
        k, v: ``[B, Hkv, Lk, D]`` or ``[B, Lk, Hkv, D]``; ``Hq % Hkv == 0``, ``Lq ≤ Lk``.
        cfg, scale, layer, backend: as in the torch function.
        return_stats: also return :class:`RRStats` (torch tensors).

    Returns:
        ``out`` in q's layout and dtype; with ``return_stats``, ``(out, stats)``.
    """
    tq, tk, tv = torch_inputs(layout, q=q, k=k, v=v)
    result = api.rr_attention(tq, tk, tv, cfg, scale=scale, layer=layer, return_stats=return_stats, backend=backend)
    out, stats = result if return_stats else (result, None)
    out = paddle_output(out, layout)
    return (out, stats) if return_stats else out


def estimate_block_scores(q, k, cfg: RRConfig | None = None, *, layout: str = "bhld", layer: int | None = None,
                          scale: float | None = None, backend: str | None = None) -> paddle.Tensor:
    """:func:`rrattention.estimate_block_scores` on paddle tensors: q/k in ``layout``; returns fp32
    ``[B, Hq, ceil(Lq/Bk), ceil(Lk/Bk)]``."""
    tq, tk = torch_inputs(layout, q=q, k=k)
    return paddle_output(api.estimate_block_scores(tq, tk, cfg, layer=layer, scale=scale, backend=backend), layout, qkv_like=False)


def select_blocks(scores, cfg: RRConfig | None = None, *, q_len: int, k_len: int, layer: int | None = None,
                  backend: str | None = None) -> paddle.Tensor:
    """:func:`rrattention.select_blocks` on a paddle score tensor ``[B, Hq, nbq, nbk]``; returns the
    bool block mask of the same shape."""
    for name, value in (("q_len", q_len), ("k_len", k_len)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    (tscores,) = torch_inputs("bhld", scores=scores)
    mask = api.select_blocks(tscores, cfg, q_len=q_len, k_len=k_len, layer=layer, backend=backend)
    return paddle_output(mask, "bhld", qkv_like=False)


def block_sparse_attention(q, k, v, block_mask, scale: float | None = None, return_lse: bool = False, *,
                           layout: str = "bhld", block_size: int = 128, backend: str | None = None):
    """:func:`rrattention.block_sparse_attention` on paddle tensors: q/k/v in ``layout``, the bool
    ``block_mask`` ``[B, Hq, nbq, nbk]``; returns ``out`` in q's layout (and fp32 ``lse`` ``[B, Hq, Lq]``)."""
    tq, tk, tv, tmask = torch_inputs(layout, q=q, k=k, v=v, block_mask=block_mask)
    result = api.block_sparse_attention(tq, tk, tv, tmask, scale, return_lse, block_size=block_size, backend=backend)
    if return_lse:
        out, lse = result
        return paddle_output(out, layout), paddle_output(lse, layout, qkv_like=False)
    return paddle_output(result, layout)


__all__ = ["LAYOUTS", "RRStats", "block_sparse_attention", "estimate_block_scores", "rr_attention", "select_blocks",
           "to_paddle", "to_torch"]
