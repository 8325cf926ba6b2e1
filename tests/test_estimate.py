"""Spec §3: stride mean keys, stride softmax and block scores."""

import math

import numpy as np
import pytest
import torch

import rrattention as rr
from rrattention.reference import head_offsets, sampled_query_positions, stride_mean_keys, stride_probabilities
from tests import oracle
from tests.helpers import make_qkv


def test_block_rows_sum_to_the_number_of_valid_sampled_rows():
    q, k, _ = make_qkv(q_heads=4, kv_heads=4, q_len=1003, dim=16)
    scores = rr.estimate_block_scores(q, k)
    assert scores.shape == (1, 4, 8, 8) and scores.dtype == torch.float32
    totals = scores.sum(-1)[0]
    # 7 full blocks hold R = 16 rows; the last block (tokens 896-1002) holds 14 strides (112-125),
    # whose last stride (tokens 1000-1002) is sampled only by heads 0-2
    expected = torch.tensor([[16.0] * 7 + [14.0]] * 3 + [[16.0] * 7 + [13.0]])
    torch.testing.assert_close(totals, expected, atol=1e-4, rtol=0)


def test_worked_example_head1_block_row2():
    q, k, _ = make_qkv(q_heads=4, kv_heads=4, q_len=1024, dim=16, seed=1)
    scores = rr.estimate_block_scores(q, k)[0, 1]
    assert bool((scores[2, :3] > 0).all()) and bool((scores[2, 3:] == 0).all())
    assert abs(float(scores[2].sum()) - 16.0) < 1e-4
    # row m = 40 (token 321) sees key strides 0..40: tokens 0..327, i.e. including 322..327
    t, _ = sampled_query_positions(1024, 8, head_offsets(4, 4, 8))
    assert t[1, 40] == 321
    key_means = stride_mean_keys(k, 8)[0, 1]
    p = stride_probabilities(q[0, 1, t[1, 40:41]], key_means, t[1, 40:41], 0, 8, 0.25)
    assert bool((p[0, :41] > 0).all()) and bool((p[0, 41:] == 0).all())


def test_keys_past_lk_count_as_zero_with_divisor_s():
    k = torch.arange(1, 11, dtype=torch.float32).view(1, 1, 10, 1)  # Lk = 10, S = 4: strides of 4, 4, 2 keys
    means = stride_mean_keys(k, 4)[0, 0, :, 0]
    assert means.tolist() == [10 / 4, 26 / 4, 19 / 4]


@pytest.mark.parametrize(
    "hq, hkv, lq, lk, s, bk, policy, exact",
    [
        (2, 1, 200, 200, 4, 32, "round_robin", False),
        (4, 2, 77, 150, 8, 16, "round_robin", False),
        (3, 3, 100, 131, 4, 16, "fixed", False),
        (4, 1, 96, 96, 2, 16, "group_round_robin", False),
        (2, 2, 61, 200, 4, 32, "round_robin", True),
        (6, 2, 150, 150, 8, 32, "group_round_robin", True),
    ],
)
def test_matches_the_literal_float64_oracle(hq, hkv, lq, lk, s, bk, policy, exact):
    q, k, _ = make_qkv(q_heads=hq, kv_heads=hkv, q_len=lq, k_len=lk, dim=8, seed=lq + lk)
    cfg = rr.RRConfig(stride=s, block_size=bk, head_shift=policy, exact_stride_causal=exact)
    got = rr.estimate_block_scores(q, k, cfg)[0].double().numpy()
    want = oracle.block_scores(q[0].numpy(), k[0].numpy(), s, bk, oracle.offsets(policy, hq, hkv, s), exact=exact)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_exact_stride_causal_only_changes_rows_whose_diagonal_stride_is_partial():
    q, k, _ = make_qkv(q_heads=8, kv_heads=8, q_len=256, dim=16)
    loose = rr.estimate_block_scores(q, k, rr.RRConfig(stride=8, block_size=64))
    exact = rr.estimate_block_scores(q, k, rr.RRConfig(stride=8, block_size=64, exact_stride_causal=True))
    # with δ = 0, head 7 samples the last token of each stride, so its diagonal stride is whole
    torch.testing.assert_close(loose[:, 7], exact[:, 7], atol=0, rtol=0)
    assert not torch.allclose(loose[:, 0], exact[:, 0])


def test_low_precision_inputs_are_scored_in_fp32(device):
    q, k, _ = make_qkv(q_heads=4, kv_heads=2, q_len=300, dim=64, dtype=torch.bfloat16, device=device)
    bf16 = rr.estimate_block_scores(q, k)
    fp32 = rr.estimate_block_scores(q.float(), k.float())
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=1e-5, rtol=1e-5)


def test_gqa_shares_key_means_across_the_group():
    q, k, _ = make_qkv(q_heads=6, kv_heads=2, q_len=128, dim=16)
    gqa = rr.estimate_block_scores(q, k, rr.RRConfig(block_size=32))
    mha = rr.estimate_block_scores(q, k.repeat_interleave(3, dim=1), rr.RRConfig(block_size=32))
    torch.testing.assert_close(gqa, mha, atol=0, rtol=0)


def test_scale_defaults_to_inverse_sqrt_d():
    q, k, _ = make_qkv(q_len=128, dim=16)
    cfg = rr.RRConfig(block_size=32)
    torch.testing.assert_close(rr.estimate_block_scores(q, k, cfg), rr.estimate_block_scores(q, k, cfg, scale=1 / math.sqrt(16)))
    assert not torch.allclose(rr.estimate_block_scores(q, k, cfg), rr.estimate_block_scores(q, k, cfg, scale=1.0))
