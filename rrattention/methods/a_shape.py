"""``a_shape``: StreamingLLM's static pattern — the first blocks (attention sink) and a local window."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from ..config import AttentionConfig, _check_int
from ..reference import visible_blocks
from .base import MaskMethod, diagonal_blocks


@dataclass(frozen=True)
class AShapeConfig(AttentionConfig):
    """Args:
        sink_blocks: leading key blocks every row keeps.
        local_blocks: key blocks of the local window, the diagonal block included.
    """

    block_size: int = 128
    sink_blocks: int = 1
    local_blocks: int = 8
    min_sparse_len: int | None = None  # None: the measured dense/sparse crossover (spec §6)
    dense_layers: tuple[int, ...] = ()
    layer_overrides: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)

    method: ClassVar[str] = "a_shape"
    __hash__ = AttentionConfig.__hash__

    def __post_init__(self) -> None:
        _check_int("sink_blocks", self.sink_blocks, minimum=0)
        _check_int("local_blocks", self.local_blocks, minimum=1)
        self._validate_common()


def estimate(q: torch.Tensor, k: torch.Tensor, cfg: AShapeConfig, layer=None, *, scale=None) -> torch.Tensor:
    """Blocks ``j < sink_blocks`` and ``diag_i − local_blocks < j ≤ diag_i`` (bottom-right), AND visible."""
    q_len, k_len = q.shape[2], k.shape[2]
    bk = cfg.block_size
    n_kblocks = -(-k_len // bk)
    j = torch.arange(n_kblocks, device=q.device)[None, :]
    diag = diagonal_blocks(q_len, k_len, bk, q.device)[:, None]
    mask = (j < cfg.sink_blocks) | ((j > diag - cfg.local_blocks) & (j <= diag))
    mask &= visible_blocks(q_len, k_len, bk, q.device)
    return mask.expand(q.shape[0], q.shape[1], -1, -1)


METHOD = MaskMethod("a_shape", AShapeConfig, estimate, "sink blocks + local window of blocks (StreamingLLM), static")
