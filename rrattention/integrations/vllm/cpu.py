"""The plugin's CPU variant, for tests: vLLM's CPU platform runs only a backend named ``CPU_ATTN``,
so :func:`rrattention.integrations.vllm.register` puts this class under that name when
``RRATTENTION_VLLM_CPU_ATTN=1`` is set.

It runs every row through :mod:`.paged`, decodes included (vLLM's CPU kernel reads a cache packed
for its instruction set, which this variant does not write): it stores keys and values itself in
the plain logical layout, orders decodes first and splits the batch as the CUDA backend does;
decode rows are single queries, which spec §6 runs dense, and prefill rows run RRAttention with
the reference backend (the Triton kernels need CUDA). The declines, settings, layer index, head
offset and telemetry are the CUDA backend's (:mod:`.backend`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from vllm.v1.attention.backend import AttentionImpl, AttentionMetadataBuilder, AttentionType, MultipleOf
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

from .backend import DeclinesMixin, RRImplMixin, paged_rows, split_rows
from .paged import PagedRows, write_kv


@dataclass
class RRCPUMetadata:
    num_actual_tokens: int
    max_query_len: int
    max_seq_len: int
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    slot_mapping: torch.Tensor
    decode: PagedRows | None = None
    prefill: PagedRows | None = None
    causal: bool = True


class RRCPUMetadataBuilder(AttentionMetadataBuilder[RRCPUMetadata]):
    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.block_size = kv_cache_spec.block_size
        self._init_reorder_batch_threshold(1)

    def build(self, common_prefix_len: int, common_attn_metadata, fast_build: bool = False) -> RRCPUMetadata:
        common = common_attn_metadata
        num_decodes, last = split_rows(common)
        return RRCPUMetadata(
            num_actual_tokens=common.num_actual_tokens, max_query_len=common.max_query_len,
            max_seq_len=common.max_seq_len, query_start_loc=common.query_start_loc, seq_lens=common.seq_lens,
            block_table=common.block_table_tensor, slot_mapping=common.slot_mapping,
            decode=paged_rows(common, self.block_size, 0, num_decodes),
            prefill=paged_rows(common, self.block_size, num_decodes, last),
        )


class RRCPUAttentionImpl(RRImplMixin, AttentionImpl):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int, alibi_slopes, sliding_window,
                 kv_cache_dtype: str, logits_soft_cap: float | None = None, attn_type: str = AttentionType.DECODER,
                 kv_sharing_target_layer_name: str | None = None, sinks: torch.Tensor | None = None, **extra: Any):
        self._rr_init(num_heads=num_heads, num_kv_heads=num_kv_heads, alibi_slopes=alibi_slopes,
                      sliding_window=sliding_window, logits_soft_cap=logits_soft_cap, sinks=sinks, attn_type=attn_type,
                      kv_cache_dtype=kv_cache_dtype)
        self.num_heads, self.head_size, self.scale, self.num_kv_heads = num_heads, head_size, float(scale), num_kv_heads
        self.kv_cache_dtype, self.attn_type = kv_cache_dtype, attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        write_kv(kv_cache, key, value, slot_mapping)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata: RRCPUMetadata | None, output,
                output_scale=None, output_block_scale=None):
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("RRATTENTION: fused output quantization not supported")
        if attn_metadata is None:
            return output
        if attn_metadata.decode is not None:
            self._rr_attend(layer, query, kv_cache, attn_metadata.decode, output, report=False)
        if attn_metadata.prefill is not None:
            self._rr_attend(layer, query, kv_cache, attn_metadata.prefill, output)
        return output


class RRCPUAttentionBackend(DeclinesMixin, CPUAttentionBackend):
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto"]

    @staticmethod
    def get_name() -> str:
        return "CPU_ATTN"  # the only name vLLM's CPU platform selects

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return [MultipleOf(16)]

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return []

    @staticmethod
    def get_impl_cls() -> type[RRCPUAttentionImpl]:
        return RRCPUAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[RRCPUMetadataBuilder]:
        return RRCPUMetadataBuilder
