"""Vision-language models through the HF hook (CPU): the vision tower's bidirectional calls run
dense and exact, the language model's causal prefill sparse; one tiny random model per family."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import rrattention as rr  # noqa: E402
from rrattention.integrations import hf  # noqa: E402
from rrattention.integrations._calls import NON_CAUSAL  # noqa: E402
from tests.vlm_models import FAMILIES, qwen2_vl  # noqa: E402

EXACT = rr.RRConfig(tau=1.0, block_size=64, min_sparse_len=0)
SPARSE = rr.RRConfig(tau=0.5, stride=4, block_size=32, min_sparse_len=0)


def _forward(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tau_one_equals_sdpa_vision_dense_language_sparse(family):
    reference, inputs = FAMILIES[family]("sdpa")
    want = _forward(reference, inputs)
    model, _ = FAMILIES[family](hf.ATTN_IMPLEMENTATION)
    hf.configure(model, EXACT)
    with hf.collect_stats(model) as stats:
        got = _forward(model, inputs)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)

    encoder = stats.encoder_records()
    assert encoder, "the vision tower's calls must be recorded"
    assert all(r.is_dense and set(r.dense_reasons) == {NON_CAUSAL.reason} and r.backends == {"attention": "sdpa"}
               for r in encoder)
    prefill = stats.prefill_records()
    assert [r.layer for r in prefill] == [0, 1]  # only the language model's layers
    assert all(r.dense_reasons == (None,) and r.k_len == inputs["input_ids"].shape[1] for r in prefill)
    assert stats.sparsity() == 0.0  # τ = 1 keeps every block with mass


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_sparse_language_model_leaves_the_vision_tower_exact(family):
    reference, inputs = FAMILIES[family]("sdpa")
    model, _ = FAMILIES[family](hf.ATTN_IMPLEMENTATION)
    hf.configure(model, SPARSE)
    with torch.no_grad(), hf.collect_stats(model) as stats:
        if family == "qwen2_vl":
            want = reference.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
            got = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        else:
            want = reference.model.get_video_features(inputs["pixel_values_videos"])
            got = model.model.get_video_features(inputs["pixel_values_videos"])
        model(**inputs)
    for a, b in zip(_tensors(got), _tensors(want)):
        assert torch.equal(a, b)  # the same SDPA calls: bit for bit
    assert 0.0 < stats.sparsity() < 1.0 and all(r.dense_reasons == (None,) for r in stats.prefill_records())


def _tensors(out):
    if hasattr(out, "pooler_output") and out.pooler_output is not None:
        out = out.pooler_output
    elif hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    return list(out) if isinstance(out, (list, tuple)) else [out]


def test_padded_batch_of_two_videos_matches_each_alone():
    model, long_inputs = qwen2_vl(hf.ATTN_IMPLEMENTATION, frames=8)
    _, short_inputs = qwen2_vl(hf.ATTN_IMPLEMENTATION, frames=4)
    hf.configure(model, SPARSE)
    alone = [_forward(model, x)[0] for x in (long_inputs, short_inputs)]
    n_long, n_short = (x["input_ids"].shape[1] for x in (long_inputs, short_inputs))
    pad = n_long - n_short
    assert pad > 0

    def left_pad(t, value):
        return torch.cat([torch.full((1, pad), value, dtype=t.dtype), t], dim=1)

    batch = {
        "input_ids": torch.cat([long_inputs["input_ids"], left_pad(short_inputs["input_ids"], 0)]),
        "attention_mask": torch.cat([long_inputs["attention_mask"], left_pad(short_inputs["attention_mask"], 0)]),
        "mm_token_type_ids": torch.cat([long_inputs["mm_token_type_ids"], left_pad(short_inputs["mm_token_type_ids"], 0)]),
        "pixel_values": torch.cat([long_inputs["pixel_values"], short_inputs["pixel_values"]]),
        "image_grid_thw": torch.cat([long_inputs["image_grid_thw"], short_inputs["image_grid_thw"]]),
        "pixel_values_videos": torch.cat([long_inputs["pixel_values_videos"], short_inputs["pixel_values_videos"]]),
        "video_grid_thw": torch.cat([long_inputs["video_grid_thw"], short_inputs["video_grid_thw"]]),
    }
    with hf.collect_stats(model) as stats:
        got = _forward(model, batch)
    torch.testing.assert_close(got[0], alone[0], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(got[1, pad:], alone[1], atol=2e-5, rtol=2e-5)
    prefill = stats.prefill_records()
    assert all(r.batch == 2 and r.dense_reasons == (None, None) for r in prefill)  # packed around the padding, sparse


def test_non_causal_call_runs_dense_even_when_long_enough_for_sparse():
    """A module flagged bidirectional (no kwarg) and one passing ``is_causal=False`` both get SDPA's
    non-causal output, never the causal sparse path."""
    module = torch.nn.Module()
    module.is_causal = False
    hf.attach([module], SPARSE, None)  # configured sparse: a causal call of this length would run sparse
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 256, 16, generator=g) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    for kwargs in ({}, {"is_causal": False}):
        out, _ = hf.attention_forward(module, q, k, v, None, **kwargs)
        torch.testing.assert_close(out, want)


def test_packed_cu_seqlens_are_refused():
    module = torch.nn.Module()
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="cu_seq_lens_q"):
        hf.attention_forward(module, q, q, q, None, cu_seq_lens_q=torch.tensor([0, 4, 8]))


def test_bench_vlm_prefill_runs_at_a_tiny_size(tmp_path):
    """tools/bench_vlm_prefill.py (the H200 benchmark) end to end on the CPU at a tiny geometry."""
    import sys
    from pathlib import Path

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import bench_vlm_prefill

    bench_vlm_prefill.main(["--geometry", "tiny", "--layers", "2", "--cases", "8:4x8", "--taus", "1.0,0.5",
                            "--repeats", "1", "--min-sparse-len", "0", "--device", "cpu", "--out", str(tmp_path)])
    rows = pd.read_csv(tmp_path / "bench_vlm_prefill.csv")
    assert list(rows.tau) == [1.0, 0.5] and (rows.visual_tokens == 4 * 4 * 8 // 4).all()
    assert (rows.prefill_tokens == rows.visual_tokens + 2 + 2 * 64).all()
    assert (rows.lm_sparse_calls == 2).all() and (rows.lm_dense_calls == 0).all()
    assert (rows.vision_calls == rows.vision_dense_calls).all() and (rows.vision_calls == 2 * 4).all()  # 2 blocks × 4 frame pairs
    assert rows.max_abs_dlogit[0] < 1e-4  # τ = 1 keeps every block with mass
    assert "random weights: a timing, not a quality claim" in (tmp_path / "bench_vlm_prefill.md").read_text()


def test_from_pretrained_by_name_routes_both_towers_through_the_hook(tmp_path):
    """The README's VLM example: a saved model loaded with ``attn_implementation="rrattention"``
    sends the vision tower there too (dense) and generates with a dense decode."""
    from transformers import AutoModelForImageTextToText

    model, inputs = qwen2_vl("sdpa")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path, attn_implementation=hf.ATTN_IMPLEMENTATION).eval()
    assert loaded.config.vision_config._attn_implementation == hf.ATTN_IMPLEMENTATION
    hf.configure(loaded, SPARSE)
    with torch.no_grad(), hf.collect_stats(loaded) as stats:
        out = loaded.generate(**inputs, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert stats.encoder_records() and all(r.is_dense for r in stats.encoder_records())
    decode = [r for r in stats.records if r.q_len == 1]
    assert len(decode) == 2 * 2 and all(r.is_dense for r in decode)  # 2 layers × 2 decode steps
    assert all(not r.is_dense for r in stats.prefill_records())


def test_vision_call_with_a_patch_padding_mask_stays_exact():
    """SmolVLM masks padded patches through create_bidirectional_mask (our registered mask
    function builds it): the vision tower gets that mask and SDPA's result."""
    from tests.vlm_models import smolvlm

    reference, inputs = smolvlm("sdpa")
    model, _ = smolvlm(hf.ATTN_IMPLEMENTATION)
    hf.configure(model, SPARSE)
    mask = inputs["pixel_attention_mask"].clone()
    mask[0, 1, :, 14:] = False  # frame 1: right half padding
    mask[0, 2, 14:, :] = False  # frame 2: bottom half padding
    with torch.no_grad(), hf.collect_stats(model) as stats:
        want = reference.model.get_image_features(pixel_values=inputs["pixel_values"], pixel_attention_mask=mask)
        got = model.model.get_image_features(pixel_values=inputs["pixel_values"], pixel_attention_mask=mask)
    for a, b in zip(_tensors(got), _tensors(want)):
        assert torch.equal(a, b)
    assert stats.encoder_records() and all(r.is_dense for r in stats.encoder_records())
