"""Packed variable-length sequences and padding (spec §1)."""

import pytest
import torch

import rrattention as rr
from tests.helpers import make_qkv

CFG = rr.RRConfig(stride=4, block_size=32, tau=0.8, min_sparse_len=0)


def _pack(pieces):
    cu = torch.tensor([0] + [p.shape[2] for p in pieces], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return torch.cat([p[0].transpose(0, 1) for p in pieces]), cu


def test_varlen_equals_each_sequence_alone():
    lens = [(100, 100), (37, 90), (1, 50), (200, 200)]
    seqs = [make_qkv(1, 4, 2, lq, lk, 16, seed=i) for i, (lq, lk) in enumerate(lens)]
    q, cu_q = _pack([s[0] for s in seqs])
    k, cu_k = _pack([s[1] for s in seqs])
    v, _ = _pack([s[2] for s in seqs])
    out, stats = rr.rr_attention_varlen(q, k, v, cu_q, cu_k, 200, 200, CFG, return_stats=True)
    assert out.shape == q.shape
    selected = visible = 0
    for s, (qs, ks, vs) in enumerate(seqs):
        want, one = rr.rr_attention(qs, ks, vs, CFG, return_stats=True)
        torch.testing.assert_close(out[cu_q[s] : cu_q[s + 1]], want[0].transpose(0, 1), atol=0, rtol=0)
        rows, cols = one.block_mask.shape[-2:]
        assert torch.equal(stats.block_mask[s, :, :rows, :cols], one.block_mask[0])
        assert not bool(stats.block_mask[s, :, rows:].any() or stats.block_mask[s, :, :, cols:].any())
        selected += int(one.block_mask.sum())
        visible += int(one.visible_mask.sum())
    assert stats.dense_reasons == (None, None, "single query (Lq == 1, decode)", None)
    assert stats.sparsity == pytest.approx(1 - selected / visible)


def test_padding_never_changes_results():
    # a right-padded batch, unpadded into the packed form; what sits in the padding is irrelevant
    lens = [150, 64, 97]
    q, k, v = make_qkv(3, 2, 1, 150, 150, 16, seed=2)
    keep = torch.arange(150)[None, :] < torch.tensor(lens)[:, None]
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)

    def run(q, k, v):
        pack = lambda x: x.transpose(1, 2)[keep]  # noqa: E731  [B,H,L,D] -> [T,H,D]
        return rr.rr_attention_varlen(pack(q), pack(k), pack(v), cu, cu, 150, 150, CFG)

    out = run(q, k, v)
    garbage = [x.clone() for x in (q, k, v)]
    for x in garbage:
        x.transpose(1, 2)[~keep] = 1e4
    torch.testing.assert_close(run(*garbage), out, atol=0, rtol=0)
    for b, n in enumerate(lens):
        want = rr.rr_attention(q[b : b + 1, :, :n], k[b : b + 1, :, :n], v[b : b + 1, :, :n], CFG)
        torch.testing.assert_close(out[cu[b] : cu[b + 1]], want[0].transpose(0, 1), atol=0, rtol=0)


@pytest.mark.parametrize(
    "cu_q, cu_k, max_q, max_k, error, message",
    [
        ([0, 10, 20], [0, 20], 10, 20, ValueError, "same number of sequences"),
        ([1, 20], [0, 20], 20, 20, ValueError, r"cu_seqlens_q\[0\] must be 0"),
        ([0, 19], [0, 20], 20, 20, ValueError, r"cu_seqlens_q\[-1\] must equal the number of packed tokens \(20\)"),
        ([0, 10, 10, 20], [0, 10, 15, 20], 10, 10, ValueError, "empty sequences are not allowed"),
        ([0, 15, 20], [0, 10, 20], 15, 10, ValueError, r"sequence 0 has more queries \(15\) than keys \(10\)"),
        ([0, 10, 20], [0, 10, 20], 9, 10, ValueError, r"max_seqlen_q must be >= the longest sequence \(10\)"),
        ([0, 10, 20], [0, 10, 20], 10, 8, ValueError, r"max_seqlen_k must be >= the longest sequence \(10\)"),
        ([0, 10, 20], [0, 10, 20], 10.0, 10, TypeError, "max_seqlen_q must be an int"),
    ],
)
def test_bad_cu_seqlens(cu_q, cu_k, max_q, max_k, error, message):
    q, k, v = (torch.randn(20, h, 8) for h in (2, 1, 1))
    with pytest.raises(error, match=message):
        rr.rr_attention_varlen(q, k, v, torch.tensor(cu_q, dtype=torch.int32), torch.tensor(cu_k, dtype=torch.int32), max_q, max_k)


def test_bad_cu_seqlens_types():
    q, k, v = (torch.randn(20, h, 8) for h in (2, 1, 1))
    cu = torch.tensor([0, 20], dtype=torch.int32)
    with pytest.raises(TypeError, match="cu_seqlens_q must be an int32 torch.Tensor"):
        rr.rr_attention_varlen(q, k, v, [0, 20], cu, 20, 20)
    with pytest.raises(ValueError, match="cu_seqlens_k must be int32"):
        rr.rr_attention_varlen(q, k, v, cu, cu.float(), 20, 20)
    with pytest.raises(ValueError, match=r"cu_seqlens_k must be a 1-D tensor \[N\+1\]"):
        rr.rr_attention_varlen(q, k, v, cu, cu[:1], 20, 20)
    with pytest.raises(ValueError, match=r"q must be a 3-D tensor \[Tq, Hq, D\]"):
        rr.rr_attention_varlen(q[None], k, v, cu, cu, 20, 20)
    with pytest.raises(ValueError, match=r"v must have the shape of k"):
        rr.rr_attention_varlen(q, k, v[:10], cu, cu, 20, 20)
    with pytest.raises(ValueError, match="q holds NaN"):
        rr.rr_attention_varlen(q * float("nan"), k, v, cu, cu, 20, 20, check_inputs=True)
