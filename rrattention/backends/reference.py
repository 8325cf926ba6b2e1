"""The plain-PyTorch definition (:mod:`rrattention.reference`) as a backend: every stage, any device.

It takes the padded layout only; a packed batch is planned one sequence at a time
(:class:`rrattention.plan.AttentionPlan`), which is how spec §1 defines it.
"""

from __future__ import annotations

import torch

from .. import reference
from .base import DENSE, STAGES, Backend, EstimatorSettings, Selection, SelectionSettings


class ReferenceBackend(Backend):
    name = "reference"
    description = "the plain-PyTorch definition (rrattention.reference); any device, slow on long inputs"
    stages = frozenset({*STAGES, DENSE})
    devices = frozenset({"cpu", "cuda", "mps", "xpu"})
    varlen = False

    def rr_scores(self, q, k, settings: EstimatorSettings, packed=None) -> torch.Tensor:
        offsets = reference.head_offsets(q.shape[1], k.shape[1], settings.stride, settings.head_shift,
                                         layer=settings.layer, seed=settings.seed, head_start=settings.head_start)
        return reference.block_scores(q, k, stride=settings.stride, block_size=settings.block_size, offsets=offsets,
                                      exact_stride_causal=settings.exact_stride_causal, scale=settings.scale,
                                      precision=settings.precision)

    def antidiagonal_scores(self, q, k, *, stride: int, block_size: int, scale: float, packed=None) -> torch.Tensor:
        return reference.antidiagonal_block_scores(q, k, stride=stride, block_size=block_size, scale=scale)

    def select(self, scores, settings: SelectionSettings, q_len: int, k_len: int, packed=None) -> Selection:
        return Selection(reference.select_blocks(
            scores, q_len=q_len, k_len=k_len, block_size=settings.block_size, tau=settings.tau, selector=settings.selector,
            force_sink=settings.force_sink, force_diagonal=settings.force_diagonal,
            dense_last_query_block=settings.dense_last_query_block,
        ))

    def attend(self, q, k, v, selection: Selection, *, block_size: int, scale: float, packed=None,
               out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        result, lse = reference.block_sparse_attention(q, k, v, selection.block_mask, block_size=block_size, scale=scale)
        if out is None:
            return result, lse
        return out.copy_(result), lse

    def dense_attend(self, q, k, v, *, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
        result = reference.dense_causal_attention(q, k, v, scale=scale)  # SDPA: the framework's own kernels
        return result if out is None else out.copy_(result)
