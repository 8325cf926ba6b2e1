"""``RRATTENTION``: vLLM's FlashAttention backend with RRAttention prefill (CUDA).

Decode rows stay on FlashAttention's own kernel; every prefill row, a fresh prompt or a chunked-
prefill continuation, runs RRAttention over all of its sequence's keys, read from the paged cache
(:mod:`.paged`) and fed to the packed path with bottom-right causality (``Lq`` new queries at the
end of ``Lk = seq_len`` keys) and spec §6's dense policies per sequence.

* The metadata builder orders decodes first (``reorder_batch_threshold = 1``) and builds, once per
  step, FlashAttention's metadata of the decode rows and the paged layout of the prefill rows;
  the prefill plan is made by the first layer and reused by the others.
* What the backend cannot do is declined through vLLM's own checks (``validate_configuration``
  and the ``supports_*`` hooks it calls, and the impl's constructor for what those do not see),
  so vLLM refuses the configuration at start-up with the reason, never mid-forward.
* Settings come from ``--additional-config '{"rrattention": {...}}'`` (:mod:`.settings`); the
  layer index from the layer's name; the query-head offset of a tensor-parallel rank from its rank.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from vllm.config import get_current_vllm_config
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.model_executor.models.utils import extract_layer_index
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType
from vllm.v1.attention.backends.flash_attn import (
    FlashAttentionBackend,
    FlashAttentionImpl,
    FlashAttentionMetadata,
    FlashAttentionMetadataBuilder,
)
from vllm.v1.attention.backends.utils import split_decodes_and_prefills

from ..tensor_parallel import rank_head_start, replicated_kv_reason
from .paged import PagedRows, call_record
from .settings import VllmSettings

# A child of vLLM's logger: VLLM_LOGGING_LEVEL=DEBUG prints one statistics line per prefill call.
logger = logging.getLogger("vllm.rrattention")

NAME = "RRATTENTION"
KV_PAGE = 128  # the block size asked for: one KV page per RRAttention block


def unsupported_reasons(*, alibi_slopes=None, sliding_window=None, logits_soft_cap=None, sinks=None,
                        attn_type: str = AttentionType.DECODER, kv_cache_dtype: str = "auto") -> list[str]:
    """What an attention layer asks for that the backend does not do (vLLM's wording where it has one)."""
    reasons = []
    if alibi_slopes is not None:
        reasons.append("ALiBi not supported")
    if sliding_window is not None:
        reasons.append("sliding window not supported")
    if logits_soft_cap:
        reasons.append("logits soft-capping not supported")
    if sinks is not None:
        reasons.append("attention sinks not supported")
    if attn_type != AttentionType.DECODER:
        reasons.append(f"attention type {attn_type} not supported")
    if kv_cache_dtype not in ("auto", "float16", "bfloat16"):
        reasons.append(f"kv_cache_dtype {kv_cache_dtype} not supported")
    return reasons


class DeclinesMixin:
    """The ``supports_*`` answers both backends (CUDA and the CPU test variant) share."""

    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto", "float16", "bfloat16"]

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return False

    @classmethod
    def supports_rswa(cls) -> bool:
        return False

    @classmethod
    def supports_sink(cls) -> bool:
        return False

    @classmethod
    def supports_mm_prefix(cls) -> bool:
        return False

    @classmethod
    def supports_non_causal(cls) -> bool:
        return False

    @classmethod
    def supports_batch_invariance(cls) -> bool:
        return False

    @classmethod
    def supports_per_head_quant_scales(cls) -> bool:
        return False

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER

    @classmethod
    def supports_head_size(cls, head_size: int) -> bool:
        return head_size % 8 == 0 and 16 <= head_size <= 256  # the Triton kernels' head dims

    @classmethod
    def supports_pcp(cls) -> bool:
        return False

    @classmethod
    def supports_dcp(cls) -> bool:
        return False


class RRImplMixin:
    """Settings, layer index, head offset and telemetry of one layer's impl (both variants)."""

    def _rr_init(self, *, num_heads: int, num_kv_heads: int, **layer_options) -> None:
        reasons = unsupported_reasons(**layer_options)
        if reasons:
            raise NotImplementedError(f"{NAME} attention backend: {'; '.join(reasons)}")
        vllm_config = get_current_vllm_config()
        self.rr_settings = VllmSettings.from_additional_config(vllm_config.additional_config)
        self.rr_tp_rank = get_tensor_model_parallel_rank()
        # Spec §2: rank p of tp holds global query heads [p·H_local, (p+1)·H_local).
        self.rr_head_start = rank_head_start(self.rr_tp_rank, num_heads)
        reason = replicated_kv_reason(self.rr_settings.head_shifts(), get_tensor_model_parallel_world_size(),
                                      vllm_config.model_config.get_total_num_kv_heads())
        if reason is not None:
            raise NotImplementedError(f"{NAME}: {reason}")
        self.rr_layer: int | None = None
        self.rr_layer_name: str | None = None

    def _rr_layer_index(self, layer: torch.nn.Module) -> int:
        name = getattr(layer, "layer_name", None)
        if name != self.rr_layer_name:
            try:
                self.rr_layer = extract_layer_index(name)
            except (AssertionError, TypeError, ValueError) as err:
                raise ValueError(f"{NAME}: no layer index in the attention layer's name {name!r} "
                                 f"(per-layer settings need one): {err}") from None
            self.rr_layer_name = name
        return self.rr_layer

    def _rr_attend(self, layer, query: torch.Tensor, kv_cache: torch.Tensor, rows: PagedRows, output: torch.Tensor,
                   report: bool = True) -> None:
        settings = self.rr_settings
        index = self._rr_layer_index(layer)
        plan, run = rows.attend(query, kv_cache, output, settings.cfg, layer=index, scale=self.scale,
                                head_start=self.rr_head_start, backend=settings.backend,
                                time_stages=settings.time_stages)
        if report and (settings.stats_file is not None or logger.isEnabledFor(logging.DEBUG)):
            record = call_record(rows, plan, run, index, layer_name=self.rr_layer_name, tp_rank=self.rr_tp_rank,
                                 head_start=self.rr_head_start, pid=os.getpid(), decode_rows=rows.first,
                                 timings_ms=dict(run.timings_ms))
            line = json.dumps(record)
            logger.debug("rrattention prefill %s", line)
            if settings.stats_file is not None:
                with open(settings.stats_file, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")


@dataclass
class RRAttentionMetadata(FlashAttentionMetadata):
    """FlashAttention's metadata of the whole batch, plus the decode rows' own (``decode``, None
    without decodes) and the prefill rows' paged layout (``prefill``, None without prefills)."""

    decode: FlashAttentionMetadata | None = None
    prefill: PagedRows | None = None


def split_rows(common) -> tuple[int, int]:
    """``(num_decodes, num_reqs)`` of a reordered batch (decodes first); trailing requests without
    queries (padding) are dropped."""
    num_decodes, _, _, _ = split_decodes_and_prefills(common, decode_threshold=1)
    starts = common.query_start_loc_cpu
    last = common.num_reqs
    while last > num_decodes and int(starts[last]) == int(starts[last - 1]):
        last -= 1
    return num_decodes, last


def host_seq_lens(common, first: int, last: int) -> list[int]:
    """``seq_lens`` of rows ``[first, last)`` on the host (exact for prefill rows, no device sync)."""
    bound = common.seq_lens_cpu_upper_bound
    source = bound if bound is not None else common.seq_lens.cpu()
    return [int(x) for x in source[first:last]]


def paged_rows(common, block_size: int, first: int, last: int) -> PagedRows | None:
    if first >= last:
        return None
    lens = [0] * first + host_seq_lens(common, first, last)
    return PagedRows.build(common.query_start_loc_cpu.tolist(), lens, common.block_table_tensor, block_size, first, last)


class RRAttentionMetadataBuilder(FlashAttentionMetadataBuilder):
    # Full CUDA graphs replay pure decode batches only (FlashAttention's path); a prefill's plan
    # depends on its lengths, so batches with prefills run eagerly (piecewise graphs around them).
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        return cls._cudagraph_support

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self._init_reorder_batch_threshold(1)

    def build(self, common_prefix_len: int, common_attn_metadata, fast_build: bool = False) -> RRAttentionMetadata:
        common = common_attn_metadata
        whole = super().build(common_prefix_len, common, fast_build)
        num_decodes, last = split_rows(common)
        if num_decodes == common.num_reqs:
            decode = whole
        elif num_decodes:
            decode_tokens = int(common.query_start_loc_cpu[num_decodes])
            decode = super().build(0, dataclasses.replace(common.unpadded(decode_tokens, num_decodes), max_query_len=1),
                                   fast_build)
        else:
            decode = None
        prefill = paged_rows(common, self.block_size, num_decodes, last)
        fields = {f.name: getattr(whole, f.name) for f in dataclasses.fields(FlashAttentionMetadata)}
        return RRAttentionMetadata(**fields, decode=decode, prefill=prefill)


class RRAttentionImpl(RRImplMixin, FlashAttentionImpl):
    supports_dcp: ClassVar[bool] = False
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int, alibi_slopes, sliding_window,
                 kv_cache_dtype: str, logits_soft_cap: float | None = None, attn_type: str = AttentionType.DECODER,
                 kv_sharing_target_layer_name: str | None = None, sinks: torch.Tensor | None = None, **extra: Any):
        self._rr_init(num_heads=num_heads, num_kv_heads=num_kv_heads, alibi_slopes=alibi_slopes,
                      sliding_window=sliding_window, logits_soft_cap=logits_soft_cap, sinks=sinks, attn_type=attn_type,
                      kv_cache_dtype=kv_cache_dtype)
        super().__init__(num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window, kv_cache_dtype,
                         logits_soft_cap, attn_type, kv_sharing_target_layer_name, sinks, **extra)
        self.supports_quant_query_input = False

    def fused_output_quant_supported(self, quant_key) -> bool:
        return False

    def forward(self, layer, query, key, value, kv_cache, attn_metadata: RRAttentionMetadata | None, output,
                output_scale=None, output_block_scale=None):
        """``query [T, Hq, D]`` (decode rows first), ``kv_cache [num_blocks, Hkv, block_size, 2·D]``
        holding this step's keys already, ``output [T, Hq, D]``: decode rows by FlashAttention,
        prefill rows by RRAttention."""
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError(f"{NAME}: fused output quantization not supported")
        if attn_metadata is None:  # profiling run
            return output.fill_(0)
        if attn_metadata.decode is not None:
            super().forward(layer, query, key, value, kv_cache, attn_metadata.decode, output)
        if attn_metadata.prefill is not None:
            self._rr_attend(layer, query, kv_cache, attn_metadata.prefill, output)
        return output


class RRAttentionBackend(DeclinesMixin, FlashAttentionBackend):
    """vLLM's FlashAttention backend, RRAttention for prefill rows (see the module docstring)."""

    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16]

    @staticmethod
    def get_name() -> str:
        return NAME

    @staticmethod
    def get_impl_cls() -> type[RRAttentionImpl]:
        return RRAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[RRAttentionMetadataBuilder]:
        return RRAttentionMetadataBuilder

    @classmethod
    def get_preferred_block_size(cls, default_block_size: int) -> int:
        """A 128-token page (one RRAttention block) where FlashAttention's decode takes it; the
        prefill gather itself takes any page size (FlashAttention's kernel sizes are inherited)."""
        preferred = super().get_preferred_block_size(default_block_size)
        return KV_PAGE if preferred < KV_PAGE and cls.supports_block_size(KV_PAGE) else preferred

    @classmethod
    def supports_kv_cache_dtype(cls, kv_cache_dtype) -> bool:
        return kv_cache_dtype is None or kv_cache_dtype in cls.supported_kv_cache_dtypes

    @classmethod
    def supports_combination(cls, head_size, dtype, kv_cache_dtype, block_size, use_mla, has_sink, use_sparse,
                             use_mm_prefix, device_capability) -> str | None:
        return None  # every combination of what the supports_* hooks accept
