"""The plugin's classes without an engine: registration through the entry point, what the
backend declines (asked as vLLM's CUDA platform asks a selected backend), the settings."""

import importlib.metadata

import pytest
import torch
from vllm.platforms.interface import DeviceCapability
from vllm.v1.attention.backends.registry import AttentionBackendEnum
from vllm.v1.attention.selector import AttentionSelectorConfig

from rrattention.integrations.vllm import register
from rrattention.integrations.vllm.backend import RRAttentionBackend, RRAttentionImpl
from rrattention.integrations.vllm.settings import VllmSettings

H100 = DeviceCapability(9, 0)


def reasons(**options):
    selector = AttentionSelectorConfig(**{"head_size": 128, "dtype": torch.bfloat16, "kv_cache_dtype": "auto",
                                          "block_size": 128, **options})
    return RRAttentionBackend.validate_configuration(device_capability=H100, **selector._asdict())


def test_the_entry_point_registers_the_backend():
    (entry,) = [e for e in importlib.metadata.entry_points(group="vllm.general_plugins") if e.name == "rrattention"]
    entry.load()()
    register()  # again: vLLM loads plugins in every process, sometimes twice
    assert AttentionBackendEnum["RRATTENTION"].get_class() is RRAttentionBackend
    assert RRAttentionBackend.get_name() == "RRATTENTION"
    assert RRAttentionBackend.get_preferred_block_size(16) == 128


def test_the_custom_slot_on_request(monkeypatch):
    monkeypatch.setenv("RRATTENTION_VLLM_CUSTOM", "1")
    register()
    assert AttentionBackendEnum.CUSTOM.get_class() is RRAttentionBackend


def test_a_plain_decoder_configuration_is_accepted():
    assert reasons() == []
    assert reasons(dtype=torch.float16, head_size=64, block_size=16) == []


@pytest.mark.parametrize("option, reason", [
    ({"has_sliding_window": True}, "sliding window not supported"),
    ({"has_sink": True}, "attention sinks not supported"),
    ({"kv_cache_dtype": "fp8"}, "kv_cache_dtype not supported"),
    ({"use_mla": True}, "MLA not supported"),
    ({"attn_type": "encoder_only"}, "attention type encoder_only not supported"),
    ({"attn_type": "encoder_decoder"}, "attention type encoder_decoder not supported"),
    ({"use_dcp": True}, "DCP not supported"),
    ({"use_pcp": True}, "PCP not supported"),
    ({"use_non_causal": True}, "non-causal attention not supported"),
    ({"use_mm_prefix": True}, "partial multimodal token full attention not supported"),
    ({"use_rswa": True}, "R-SWA not supported"),
    ({"dtype": torch.float32}, "dtype not supported"),
    ({"head_size": 512}, "head_size not supported"),
])
def test_unsupported_options_are_declined_with_vllms_reason(option, reason):
    assert reason in reasons(**option)


@pytest.mark.parametrize("kwargs, reason", [
    ({"alibi_slopes": [0.5, 0.25]}, "ALiBi not supported"),
    ({"logits_soft_cap": 30.0}, "logits soft-capping not supported"),
    ({"sinks": torch.zeros(2)}, "attention sinks not supported"),
])
def test_what_the_selector_does_not_see_is_declined_by_the_impl(kwargs, reason):
    args = dict(num_heads=2, head_size=64, scale=0.125, num_kv_heads=1, alibi_slopes=None, sliding_window=None,
                kv_cache_dtype="auto")
    with pytest.raises(NotImplementedError, match=reason):
        RRAttentionImpl(**{**args, **kwargs})


def test_settings_come_from_additional_config_with_the_config_classes_errors():
    s = VllmSettings.from_additional_config({"rrattention": {"tau": 0.9, "dense_layers": [0],
                                                             "layer_overrides": {"1": {"stride": 16}}}})
    assert s.cfg.tau == 0.9 and s.cfg.layer_config(1).stride == 16 and s.cfg.is_dense_layer(0)
    assert VllmSettings.from_additional_config({}).cfg.method == "rrattention"
    assert VllmSettings.from_additional_config({"rrattention": {"method": "xattention"}}).cfg.method == "xattention"
    with pytest.raises(ValueError, match="tau"):
        VllmSettings.from_additional_config({"rrattention": {"tau": 1.5}})
    with pytest.raises(ValueError, match="unknown RRConfig field"):
        VllmSettings.from_additional_config({"rrattention": {"tua": 0.9}})
    with pytest.raises(ValueError, match="backend"):
        VllmSettings.from_additional_config({"rrattention": {"backend": "nope"}})
    with pytest.raises(TypeError, match="stats_file"):
        VllmSettings.from_additional_config({"rrattention": {"stats_file": 3}})


@pytest.fixture(scope="module")
def builder(llama_dir):
    from vllm.config import CacheConfig, ModelConfig, VllmConfig, set_current_vllm_config
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    from rrattention.integrations.vllm.backend import RRAttentionMetadataBuilder

    config = VllmConfig(model_config=ModelConfig(model=llama_dir, dtype="float16", skip_tokenizer_init=True),
                        cache_config=CacheConfig(block_size=128))
    spec = FullAttentionSpec(block_size=128, num_kv_heads=2, head_size=32, dtype=torch.float16)
    with set_current_vllm_config(config):
        yield RRAttentionMetadataBuilder(spec, ["model.layers.0.self_attn.attn"], config, torch.device("cpu"))


def _common(q_lens, k_lens, max_blocks=8):
    from vllm.v1.attention.backend import CommonAttentionMetadata

    starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    lens = torch.tensor(k_lens, dtype=torch.int32)
    return CommonAttentionMetadata(
        query_start_loc=starts, query_start_loc_cpu=starts, seq_lens=lens, num_reqs=len(q_lens),
        num_actual_tokens=int(starts[-1]), max_query_len=max(q_lens), max_seq_len=max(k_lens),
        block_table_tensor=torch.arange(len(q_lens) * max_blocks, dtype=torch.int32).view(len(q_lens), max_blocks),
        slot_mapping=torch.arange(int(starts[-1])), seq_lens_cpu_upper_bound=lens)


def test_the_builder_gives_decodes_to_flash_attention_and_prefills_to_the_paged_rows(builder):
    assert builder.reorder_batch_threshold == 1
    # decodes first, then a chunked-prefill continuation and a fresh prompt
    md = builder.build(0, _common([1, 1, 189, 300], [50, 700, 700, 300]))
    assert md.num_actual_tokens == 491  # the whole batch's FlashAttention metadata stays as it is
    decode = md.decode
    assert decode.num_actual_tokens == 2 and decode.max_query_len == 1
    assert decode.query_start_loc.tolist() == [0, 1, 2] and decode.seq_lens.tolist() == [50, 700]
    assert torch.equal(decode.block_table, torch.arange(16, dtype=torch.int32).view(2, 8))
    rows = md.prefill
    assert (rows.first, rows.last, rows.token_start, rows.token_end) == (2, 4, 2, 491)
    assert rows.packed.spans == ((0, 189, 0, 700), (189, 489, 700, 1000))
    assert rows.pages[:128].eq(16).all() and rows.pages[700:828].eq(24).all()  # row 2's page 0, row 3's page 0
    # decodes only: FlashAttention's metadata as built, no prefill rows
    md = builder.build(0, _common([1, 1], [10, 20]))
    assert md.prefill is None and md.decode.num_actual_tokens == 2
    # prefills only, and a trailing padding request without queries
    md = builder.build(0, _common([100, 30, 0], [100, 60, 1]))
    assert md.decode is None and (md.prefill.first, md.prefill.last) == (0, 2)
    assert md.prefill.packed.spans == ((0, 100, 0, 100), (100, 130, 100, 160))
