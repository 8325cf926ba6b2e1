"""The whole pipeline: rr_attention and its policies (spec §6)."""

import pytest
import torch

import rrattention as rr
from rrattention.reference import visible_blocks
from tests.helpers import make_qkv


def _dense(q, k, v):
    return rr.reference.dense_causal_attention(q, k, v, scale=q.shape[-1] ** -0.5)


@pytest.mark.parametrize("dim", [64, 128, 256])
def test_tau_one_reproduces_dense_attention(dim, device):
    q, k, v = make_qkv(2, 4, 2, 300, 300, dim, device=device)
    out, stats = rr.rr_attention(q, k, v, rr.RRConfig(min_sparse_len=0, tau=1.0), return_stats=True)
    torch.testing.assert_close(out, _dense(q, k, v), atol=1e-5, rtol=1e-5)
    assert stats.sparsity == 0.0


def test_chunked_prefill_is_bottom_right_aligned(device):
    q, k, v = make_qkv(1, 4, 1, 200, 520, 32, device=device)
    out = rr.rr_attention(q, k, v, rr.RRConfig(min_sparse_len=0, tau=1.0))
    torch.testing.assert_close(out, _dense(q, k, v), atol=1e-5, rtol=1e-5)


def test_sparse_run_composes_the_three_stages_and_reports_sparsity():
    q, k, v = make_qkv(2, 4, 2, 1000, 1000, 32, seed=4)
    cfg = rr.RRConfig(min_sparse_len=0, block_size=64, tau=0.8)
    out, stats = rr.rr_attention(q, k, v, cfg, return_stats=True)
    mask = rr.select_blocks(rr.estimate_block_scores(q, k, cfg), cfg, q_len=1000, k_len=1000)
    assert torch.equal(stats.block_mask, mask)
    torch.testing.assert_close(out, rr.block_sparse_attention(q, k, v, mask, block_size=64), atol=0, rtol=0)
    visible = visible_blocks(1000, 1000, 64)
    want = 1 - mask.sum().item() / (visible.sum().item() * 2 * 4)
    assert stats.sparsity == pytest.approx(want) and 0.05 < stats.sparsity < 0.95
    assert stats.dense_reasons == (None, None)
    per_head = stats.sparsity_per_head
    assert per_head.shape == (2, 4)
    assert float(per_head.mean()) == pytest.approx(stats.sparsity)  # every head has the same visible count


def test_dense_policies():
    q, k, v = make_qkv(1, 2, 1, 640, 640, 16)
    cfg = rr.RRConfig(block_size=64, tau=0.5, dense_layers=(1,), min_sparse_len=200)
    dense = _dense(q, k, v)
    out, stats = rr.rr_attention(q, k, v, cfg, layer=1, return_stats=True)
    assert stats.dense_reasons == ("layer 1 is in dense_layers",) and stats.sparsity == 0.0
    torch.testing.assert_close(out, dense)
    assert torch.equal(stats.block_mask, visible_blocks(640, 640, 64).expand(1, 2, -1, -1))
    _, stats = rr.rr_attention(q, k, v, cfg, layer=0, return_stats=True)
    assert stats.dense_reasons == (None,) and stats.sparsity > 0
    _, stats = rr.rr_attention(q[:, :, :100], k[:, :, :150], v[:, :, :150], cfg, return_stats=True)
    assert stats.dense_reasons == ("Lk=150 < min_sparse_len=200",)
    out, stats = rr.rr_attention(q[:, :, -1:], k, v, rr.RRConfig(tau=0.1), return_stats=True)
    assert stats.dense_reasons == ("single query (Lq == 1, decode)",)
    torch.testing.assert_close(out, dense[:, :, -1:])


def test_decode_is_exact_attention_over_every_key():
    q, k, v = make_qkv(2, 6, 2, 1, 300, 16, seed=3)  # GQA group 3, batch 2
    out, stats = rr.rr_attention(q, k, v, rr.RRConfig(min_sparse_len=0), return_stats=True)
    logits = (q.reshape(2, 2, 3, 16) @ k.transpose(-1, -2)) / 4.0  # head h reads KV head h // 3
    want = (logits.softmax(-1) @ v).reshape(2, 6, 1, 16)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert stats.is_dense and stats.sparsity == 0.0 and torch.equal(stats.sparsity_per_head, torch.zeros(2, 6))


def test_layer_overrides_take_effect():
    q, k, v = make_qkv(1, 2, 1, 1024, 1024, 16)
    cfg = rr.RRConfig(min_sparse_len=0, tau=0.5, layer_overrides={3: {"tau": 1.0}})
    _, low = rr.rr_attention(q, k, v, cfg, layer=2, return_stats=True)
    _, high = rr.rr_attention(q, k, v, cfg, layer=3, return_stats=True)
    assert high.sparsity == 0.0 < low.sparsity


def test_random_head_shift_depends_on_layer():
    q, k, _ = make_qkv(1, 8, 8, 512, 512, 16)
    cfg = rr.RRConfig(min_sparse_len=0, head_shift="random")
    a = rr.estimate_block_scores(q, k, cfg, layer=0)
    assert torch.equal(a, rr.estimate_block_scores(q, k, cfg, layer=0))
    assert not torch.equal(a, rr.estimate_block_scores(q, k, cfg, layer=1))


def test_batch_equals_each_sequence_alone():
    q, k, v = make_qkv(3, 4, 2, 400, 450, 16, seed=9)
    cfg = rr.RRConfig(min_sparse_len=0, block_size=64, tau=0.7)
    out, stats = rr.rr_attention(q, k, v, cfg, return_stats=True)
    for b in range(3):
        one, one_stats = rr.rr_attention(q[b : b + 1], k[b : b + 1], v[b : b + 1], cfg, return_stats=True)
        torch.testing.assert_close(out[b : b + 1], one, atol=0, rtol=0)
        assert torch.equal(stats.block_mask[b : b + 1], one_stats.block_mask)


@pytest.mark.parametrize("policy", ["round_robin", "fixed", "random"])
def test_gqa_equals_repeated_kv_mha(policy):
    q, k, v = make_qkv(1, 8, 2, 300, 300, 16, seed=11)
    cfg = rr.RRConfig(min_sparse_len=0, block_size=64, tau=0.8, head_shift=policy)
    out, stats = rr.rr_attention(q, k, v, cfg, return_stats=True)
    mha, mha_stats = rr.rr_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), cfg, return_stats=True)
    assert torch.equal(stats.block_mask, mha_stats.block_mask)
    torch.testing.assert_close(out, mha, atol=0, rtol=0)


def test_runs_are_deterministic():
    q, k, v = make_qkv(2, 4, 2, 700, 700, 32, dtype=torch.bfloat16, seed=5)
    cfg = rr.RRConfig(min_sparse_len=0, block_size=64, tau=0.9)
    a, sa = rr.rr_attention(q, k, v, cfg, return_stats=True)
    b, sb = rr.rr_attention(q, k, v, cfg, return_stats=True)
    assert torch.equal(a, b) and torch.equal(sa.block_mask, sb.block_mask)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_non_finite_inputs(which, bad):
    q, k, v = make_qkv(1, 2, 1, 256, 256, 16)
    tensors = {"q": q, "k": k, "v": v}
    tensors[which][0, 0, 100, 3] = bad
    # without the check: no crash, no hang, output shaped as usual
    out, stats = rr.rr_attention(q, k, v, rr.RRConfig(min_sparse_len=0), return_stats=True)
    assert out.shape == q.shape and 0.0 <= stats.sparsity <= 1.0
    name = "NaN" if bad != bad else "inf"
    with pytest.raises(ValueError, match=rf"^{which} holds {name} values"):
        rr.rr_attention(q, k, v, check_inputs=True)


def test_default_config_and_fp16_inputs():
    q, k, v = make_qkv(1, 2, 2, 300, 300, 64, dtype=torch.float16)
    out, stats = rr.rr_attention(q, k, v, return_stats=True)
    assert out.dtype == torch.float16 and out.shape == q.shape
    assert bool(torch.isfinite(out).all())
    # below the default min_sparse_len (the measured GPU crossover) a call runs dense
    threshold = rr.crossover.min_sparse_len(64, 2, 2)
    assert stats.dense_reasons == (f"Lk=300 < min_sparse_len={threshold} (measured crossover for D=64, 2/2 heads)",)
