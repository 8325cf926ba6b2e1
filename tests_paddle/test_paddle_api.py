"""rrattention.paddle: paddle tensors in and out, the same results as the torch functions."""

import numpy as np
import paddle
import pytest
import torch

import rrattention as rr
import rrattention.paddle as rrp
from rrattention.kernels.block_sparse_attention import block_sparse_attention as attention_kernel

CFG = rr.RRConfig(block_size=64, stride=8, tau=0.3, min_sparse_len=0)


def _qkv(layout, dtype="float32", hq=4, hkv=2, lq=300, lk=300, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    shape = lambda h, n: (1, h, n, dim) if layout == "bhld" else (1, n, h, dim)  # noqa: E731
    return tuple(paddle.to_tensor((rng.standard_normal(shape(h, n)) * 1.5).astype(dtype))
                 for h, n in ((hq, lq), (hkv, lk), (hkv, lk)))


def _torch(x, layout):
    t = torch.from_dlpack(x)
    return t.transpose(1, 2) if layout == "blhd" else t


@pytest.mark.parametrize("layout", ["bhld", "blhd"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rr_attention_equals_the_torch_path(layout, dtype):
    q, k, v = _qkv(layout, dtype)
    out, stats = rrp.rr_attention(q, k, v, CFG, layout=layout, layer=2, return_stats=True)
    want, want_stats = rr.rr_attention(*(_torch(x, layout) for x in (q, k, v)), CFG, layer=2, return_stats=True)
    assert isinstance(out, paddle.Tensor) and out.dtype == q.dtype and list(out.shape) == list(q.shape)
    assert torch.equal(_torch(out, layout), want)
    assert torch.equal(stats.block_mask, want_stats.block_mask) and 0 < stats.sparsity == want_stats.sparsity
    assert out.is_contiguous()


@pytest.mark.parametrize("layout", ["bhld", "blhd"])
def test_stages_equal_the_torch_path(layout):
    q, k, v = _qkv(layout, lq=200, lk=330)
    tq, tk, tv = (_torch(x, layout) for x in (q, k, v))
    scores = rrp.estimate_block_scores(q, k, CFG, layout=layout, layer=1)
    assert torch.equal(torch.from_dlpack(scores), rr.estimate_block_scores(tq, tk, CFG, layer=1))
    mask = rrp.select_blocks(scores, CFG, q_len=200, k_len=330)
    want_mask = rr.select_blocks(torch.from_dlpack(scores), CFG, q_len=200, k_len=330)
    assert mask.dtype == paddle.bool and torch.equal(torch.from_dlpack(mask), want_mask)
    out, lse = rrp.block_sparse_attention(q, k, v, mask, return_lse=True, layout=layout, block_size=64)
    want_out, want_lse = rr.block_sparse_attention(tq, tk, tv, want_mask, return_lse=True, block_size=64)
    assert torch.equal(_torch(out, layout), want_out) and torch.equal(torch.from_dlpack(lse), want_lse)
    assert list(lse.shape) == [1, 4, 200]
    assert torch.equal(_torch(rrp.block_sparse_attention(q, k, v, mask, layout=layout, block_size=64), layout), want_out)


def test_inputs_are_not_copied():
    q, _, _ = _qkv("bhld")
    view = rrp.to_torch("q", q)
    assert view.data_ptr() == q.data_ptr()
    back = rrp.to_paddle(view)
    assert back.data_ptr() == q.data_ptr()


def test_triton_kernel_writes_into_paddle_memory():
    """The Triton attention kernel (CPU interpreter here) on DLPack views of paddle tensors."""
    q, k, v = _qkv("bhld", lq=200, lk=200)
    mask = rrp.select_blocks(rrp.estimate_block_scores(q, k, CFG), CFG, q_len=200, k_len=200)
    out = paddle.full(q.shape, float("nan"), dtype="float32")
    kv_count, kv_index = rr.to_kv_index(rrp.to_torch("mask", mask))
    attention_kernel(*(rrp.to_torch(n, x) for n, x in (("q", q), ("k", k), ("v", v))), kv_count, kv_index,
                     block_size=64, scale=32**-0.5, out=rrp.to_torch("out", out))
    want = rrp.block_sparse_attention(q, k, v, mask, block_size=64)
    np.testing.assert_allclose(out.numpy(), want.numpy(), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda q, k, v: rrp.rr_attention(torch.zeros(1, 2, 8, 4), k, v), TypeError, "q must be a paddle.Tensor, got Tensor"),
        (lambda q, k, v: rrp.rr_attention(q, k, np.zeros(3)), TypeError, "v must be a paddle.Tensor, got ndarray"),
        (lambda q, k, v: rrp.rr_attention(q, k, v, layout="bshd"), ValueError, "layout must be 'bhld'"),
        (lambda q, k, v: rrp.rr_attention(q[0], k, v, layout="blhd"), ValueError, r"q must be 4-D \[B, L, H, D\]"),
        (lambda q, k, v: rrp.select_blocks(paddle.zeros([1, 1, 2, 2]), q_len=2.0, k_len=2), TypeError, "q_len must be an int"),
        (lambda q, k, v: rrp.rr_attention(q, k, v, rr.RRConfig(tau=0.0)), ValueError, r"tau must be in \(0, 1\]"),
    ],
)
def test_errors_name_the_argument(call, error, message):
    q, k, v = _qkv("blhd", lq=64, lk=64)
    with pytest.raises(error, match=message):
        call(q, k, v)
