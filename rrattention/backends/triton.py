"""The fused Triton kernels (:mod:`rrattention.kernels`): estimator, on-device Top-τ selection and
block-sparse FlashAttention, padded or packed (one launch per stage for a whole packed batch)."""

from __future__ import annotations

import torch

from .base import EstimatorSettings, KernelBackend, Packed, STAGES, Selection, SelectionSettings


def _packed_args(packed: Packed | None) -> dict:
    if packed is None:
        return {}
    return dict(cu_seqlens_q=packed.cu_seqlens_q, cu_seqlens_k=packed.cu_seqlens_k)


class TritonBackend(KernelBackend):
    name = "triton"
    description = "fused Triton kernels: estimator, on-device Top-τ selection, block-sparse FlashAttention"
    stages = frozenset(STAGES)
    devices = frozenset({"cuda"})
    max_head_dim = 256
    block_sizes = frozenset({64, 128})
    requires = ("triton",)

    def rr_scores(self, q, k, settings: EstimatorSettings, packed: Packed | None = None) -> torch.Tensor:
        from ..kernels.estimate import estimate_block_scores

        lengths = {} if packed is None else dict(max_seqlen_q=packed.max_seqlen_q, max_seqlen_k=packed.max_seqlen_k)
        return estimate_block_scores(
            q, k, stride=settings.stride, block_size=settings.block_size, head_shift=settings.head_shift,
            scale=settings.scale, layer=settings.layer, seed=settings.seed, head_start=settings.head_start,
            exact_stride_causal=settings.exact_stride_causal, precision=settings.precision, launches=self.launches,
            **lengths, **_packed_args(packed),
        )

    def antidiagonal_scores(self, q, k, *, stride: int, block_size: int, scale: float,
                            packed: Packed | None = None) -> torch.Tensor:
        from ..kernels.estimate import estimate_block_scores

        lengths = {} if packed is None else dict(max_seqlen_q=packed.max_seqlen_q, max_seqlen_k=packed.max_seqlen_k)
        return estimate_block_scores(q, k, stride=stride, block_size=block_size, head_shift="round_robin", scale=scale,
                                     antidiagonal=True, launches=self.launches, **lengths,
                                     **_packed_args(packed))

    def select(self, scores, settings: SelectionSettings, q_len: int, k_len: int, packed: Packed | None = None) -> Selection:
        from ..kernels.select import select_blocks

        return Selection(*select_blocks(
            scores, q_len=0 if packed else q_len, k_len=0 if packed else k_len, block_size=settings.block_size,
            tau=settings.tau, selector=settings.selector, force_sink=settings.force_sink,
            force_diagonal=settings.force_diagonal, dense_last_query_block=settings.dense_last_query_block,
            min_sparse_len=settings.min_sparse_len, single_query_dense=settings.single_query_dense,
            launches=self.launches, **_packed_args(packed),
        ))

    def attend(self, q, k, v, selection: Selection, *, block_size: int, scale: float, packed: Packed | None = None,
               out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from ..kernels.block_sparse_attention import block_sparse_attention

        kv_count, kv_index = selection.compact()
        lengths = {} if packed is None else dict(max_seqlen_q=packed.max_seqlen_q)
        return block_sparse_attention(q, k, v, kv_count, kv_index, block_size=block_size, scale=scale, out=out,
                                      launches=self.launches, **lengths, **_packed_args(packed))
