"""Spec §5: block-sparse attention with LSE."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

import rrattention as rr
from rrattention.reference import visible_blocks
from tests import oracle
from tests.helpers import make_qkv


def _sdpa(q, k, v):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]))


@pytest.mark.parametrize(
    "batch, hq, hkv, lq, lk, dim, bk",
    [
        (1, 2, 1, 300, 300, 64, 128),
        (2, 4, 2, 200, 333, 128, 64),
        (1, 3, 3, 1, 260, 256, 128),
        (2, 6, 2, 129, 129, 32, 64),
    ],
)
def test_all_visible_mask_reproduces_dense_causal_sdpa(batch, hq, hkv, lq, lk, dim, bk, device):
    q, k, v = make_qkv(batch, hq, hkv, lq, lk, dim, seed=lq, device=device)
    mask = visible_blocks(lq, lk, bk, device).expand(batch, hq, -1, -1)
    out, lse = rr.block_sparse_attention(q, k, v, mask, return_lse=True, block_size=bk)
    torch.testing.assert_close(out, _sdpa(q, k, v), atol=1e-5, rtol=1e-5)
    assert lse.shape == (batch, hq, lq) and lse.dtype == torch.float32


def test_matches_float64_oracle_with_random_masks_and_unaligned_offset():
    q, k, v = make_qkv(1, 4, 2, 70, 150, 16, seed=3)
    bk = 32
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(1, 4, 3, 5, generator=g) > 0.4
    mask[..., 0] = True  # every query keeps at least key 0
    out, lse = rr.block_sparse_attention(q, k, v, mask, scale=0.3, return_lse=True, block_size=bk)
    want_out, want_lse = oracle.attention(q[0].numpy(), k[0].numpy(), v[0].numpy(), mask[0].numpy(), bk, 0.3)
    np.testing.assert_allclose(out[0].double().numpy(), want_out, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(lse[0].double().numpy(), want_lse, atol=1e-5, rtol=1e-5)


def test_causality_inside_non_diagonal_blocks_for_unaligned_offset():
    # δ = 64 with Bk = 128: query 0 sits at key 64, so keys 65..127 of block 0 are in its future
    q, k, v = make_qkv(1, 1, 1, 128, 192, 16)
    mask = torch.tensor([[[[True, False]]]])
    out = rr.block_sparse_attention(q, k, v, mask)
    v2 = v.clone()
    v2[:, :, 65:] = 100.0
    torch.testing.assert_close(rr.block_sparse_attention(q, k, v2, mask)[:, :, 0], out[:, :, 0])


def test_empty_rows_give_zeros_and_minus_inf_lse():
    q, k, v = make_qkv(1, 2, 1, 256, 256, 16)
    mask = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    mask[0, 0, 1, 0] = True  # head 0, row 1 keeps only the sink; everything else is empty
    out, lse = rr.block_sparse_attention(q, k, v, mask, return_lse=True)
    assert bool((out[0, 1] == 0).all()) and bool(torch.isneginf(lse[0, 1]).all())
    assert bool((out[0, 0, :128] == 0).all()) and bool(torch.isneginf(lse[0, 0, :128]).all())
    assert bool(torch.isfinite(lse[0, 0, 128:]).all())
    # a query whose selected blocks hold only future keys is empty too: δ = 92, query 0 with only block 1
    mask = torch.tensor([[[[False, True]]]])
    out, lse = rr.block_sparse_attention(q[:, :1, :100], k[:, :, :192], v[:, :, :192], mask, return_lse=True)
    assert bool(torch.isneginf(lse[0, 0, 0])) and bool((out[0, 0, 0] == 0).all())


def test_lse_merges_two_disjoint_key_sets_into_the_full_result():
    q, k, v = make_qkv(1, 2, 2, 256, 512, 32)
    visible = visible_blocks(256, 512, 128)[None, None]
    first = torch.zeros_like(visible)
    first[:, :2] = visible[:, :2]
    out_a, lse_a = rr.block_sparse_attention(q, k, v, first, return_lse=True)
    out_b, lse_b = rr.block_sparse_attention(q, k, v, visible & ~first, return_lse=True)
    lse = torch.logaddexp(lse_a, lse_b)
    merged = out_a * torch.exp(lse_a - lse)[..., None] + out_b * torch.exp(lse_b - lse)[..., None]
    torch.testing.assert_close(merged, _sdpa(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_keep_their_dtype_and_match_fp32(dtype, device):
    q, k, v = make_qkv(1, 4, 2, 200, 200, 64, dtype=dtype, device=device)
    mask = visible_blocks(200, 200, 64, device)[None, None]
    out, lse = rr.block_sparse_attention(q, k, v, mask, return_lse=True, block_size=64)
    ref, ref_lse = rr.block_sparse_attention(q.float(), k.float(), v.float(), mask, return_lse=True, block_size=64)
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_gqa_equals_repeated_kv():
    q, k, v = make_qkv(2, 6, 2, 150, 150, 16)
    mask = torch.rand(2, 6, 2, 2, generator=torch.Generator().manual_seed(2)) > 0.3
    out = rr.block_sparse_attention(q, k, v, mask)
    mha = rr.block_sparse_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), mask)
    torch.testing.assert_close(out, mha, atol=0, rtol=0)
