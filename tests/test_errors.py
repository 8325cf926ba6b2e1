"""Every bad argument of the public API raises naming the argument and what was expected."""

import pytest
import torch

import rrattention as rr


def _qkv(b=1, hq=4, hkv=2, lq=64, lk=64, d=16, dtype=torch.float32):
    return torch.randn(b, hq, lq, d, dtype=dtype), torch.randn(b, hkv, lk, d, dtype=dtype), torch.randn(b, hkv, lk, d, dtype=dtype)


def _variants():
    q, k, v = _qkv()
    yield "q not a tensor", (q.tolist(), k, v), TypeError, r"q must be a torch.Tensor \[B, Hq, Lq, D\], got list"
    yield "q 3-D", (q[0], k, v), ValueError, r"q must be a 4-D tensor \[B, Hq, Lq, D\], got shape \(4, 64, 16\)"
    yield "k 5-D", (q, k[None], v), ValueError, r"k must be a 4-D tensor \[B, Hkv, Lk, D\]"
    yield "empty q", (q[:, :, :0], k, v), ValueError, r"q must not be empty"
    yield "empty k", (q, k[:, :, :0], v[:, :, :0]), ValueError, r"k must not be empty"
    yield "int dtype", (q.long(), k, v), ValueError, r"q.dtype must be float16, bfloat16 or float32, got torch.int64"
    yield "fp64", (q, k.double(), v), ValueError, r"k.dtype must be float16, bfloat16 or float32, got torch.float64"
    yield "mixed dtypes", (q, k.half(), v), ValueError, r"q, k(, v)? must share one dtype, got q.dtype=torch.float32, k.dtype=torch.float16"
    yield "meta device", (q, k.to("meta"), v), ValueError, r"q, k(, v)? must share one device, got q.device=cpu, k.device=meta"
    yield "batch", (q, k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)), ValueError, r"k must have the batch size of q \(1\), got 2"
    yield "heads", (q[:, :3], k, v), ValueError, r"query heads of q \(3\) must be a multiple of the KV heads of k \(2\)"
    yield "head dim", (q[..., :8], k, v), ValueError, r"k must have the head dim of q \(8\), got 16"
    yield "v shape", (q, k, v[:, :, :32]), ValueError, r"v must have the shape of k \(1, 2, 64, 16\), got \(1, 2, 32, 16\)"
    yield "Lq > Lk", (q, k[:, :, :32], v[:, :, :32]), ValueError, r"q must not be longer than k .* Lq=64 > Lk=32"


@pytest.mark.parametrize("case, args, error, message", list(_variants()), ids=[c[0] for c in _variants()])
def test_bad_qkv(case, args, error, message):
    q, k, v = args
    with pytest.raises(error, match=message):
        rr.rr_attention(q, k, v)
    with pytest.raises(error, match=message):
        rr.block_sparse_attention(q, k, v, torch.ones(1, 1, 1, 1, dtype=torch.bool))
    if case != "v shape":
        with pytest.raises(error, match=message):
            rr.estimate_block_scores(q, k)


def test_bad_config_scale_and_layer():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="cfg must be an rrattention.RRConfig or another method.s config .rrattention.methods., got dict"):
        rr.rr_attention(q, k, v, {"tau": 0.9})
    for scale in (0.0, -1.0, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match=r"scale must be a finite float > 0"):
            rr.rr_attention(q, k, v, scale=scale)
    with pytest.raises(ValueError, match="layer must be >= 0, got -1"):
        rr.rr_attention(q, k, v, layer=-1)
    with pytest.raises(TypeError, match="layer must be an int"):
        rr.estimate_block_scores(q, k, layer="3")


def test_bad_block_mask():
    q, k, v = _qkv(lq=200, lk=300)
    good = torch.ones(1, 4, 2, 3, dtype=torch.bool)
    rr.block_sparse_attention(q, k, v, good)
    with pytest.raises(ValueError, match=r"block_mask must have shape \[\.\.\., 2, 3\] .*Lq=200, Lk=300, block_size=128"):
        rr.block_sparse_attention(q, k, v, torch.ones(1, 4, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"block_mask must have shape \[\.\.\., 4, 5\] .*block_size=64"):
        rr.block_sparse_attention(q, k, v, good, block_size=64)
    with pytest.raises(ValueError, match=r"block_mask.shape\[1\] must be 4 or 1"):
        rr.block_sparse_attention(q, k, v, torch.ones(1, 2, 2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"block_mask.shape\[0\] must be 1 or 1"):
        rr.block_sparse_attention(q, k, v, torch.ones(3, 4, 2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="block_mask must be a bool tensor, got torch.int32"):
        rr.block_sparse_attention(q, k, v, good.int())
    with pytest.raises(ValueError, match="block_mask must be on the device of q"):
        rr.block_sparse_attention(q, k, v, good.to("meta"))
    with pytest.raises(TypeError, match="block_mask must be a torch.Tensor"):
        rr.block_sparse_attention(q, k, v, good.tolist())
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        rr.block_sparse_attention(q, k, v, good, block_size=0)


def test_bad_select_blocks_arguments():
    scores = torch.rand(1, 2, 2, 3)
    cfg = rr.RRConfig()
    rr.select_blocks(scores, cfg, q_len=200, k_len=300)
    with pytest.raises(ValueError, match="q_len must be <= k_len, got q_len=300 > k_len=200"):
        rr.select_blocks(scores, cfg, q_len=300, k_len=200)
    with pytest.raises(ValueError, match="q_len must be >= 1"):
        rr.select_blocks(scores, cfg, q_len=0, k_len=200)
    with pytest.raises(TypeError, match="k_len must be an int"):
        rr.select_blocks(scores, cfg, q_len=200, k_len=300.0)
    with pytest.raises(ValueError, match=r"scores must have shape \[\.\.\., 2, 4\]"):
        rr.select_blocks(scores, cfg, q_len=200, k_len=500)
    with pytest.raises(ValueError, match=r"scores must be a 4-D tensor"):
        rr.select_blocks(scores[0], cfg, q_len=200, k_len=300)
    with pytest.raises(ValueError, match="scores must be a floating-point tensor"):
        rr.select_blocks(scores.int(), cfg, q_len=200, k_len=300)
    with pytest.raises(TypeError, match="select_blocks.. missing 2 required keyword-only arguments"):
        rr.select_blocks(scores, cfg)


def test_bad_to_kv_index_arguments():
    with pytest.raises(ValueError, match="block_mask must be a bool tensor"):
        rr.to_kv_index(torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"block_mask must be a non-empty 4-D tensor"):
        rr.to_kv_index(torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="block_mask must be a torch.Tensor"):
        rr.to_kv_index([[True]])
