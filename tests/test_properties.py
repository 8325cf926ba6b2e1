"""Properties of the definition over random shapes and settings (hypothesis)."""

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.bias import causal_lower_right

import rrattention as rr
from rrattention.reference import forced_blocks, visible_blocks
from tests import oracle
from tests.helpers import make_qkv


@st.composite
def problems(draw, max_len=160):
    stride = draw(st.sampled_from([1, 2, 4, 8]))
    block = draw(st.sampled_from([b for b in (8, 16, 32) if b % stride == 0]))
    k_len = draw(st.integers(1, max_len))
    return dict(
        batch=draw(st.integers(1, 2)),
        kv_heads=(kv := draw(st.integers(1, 2))),
        q_heads=kv * draw(st.integers(1, 3)),
        k_len=k_len,
        q_len=draw(st.integers(1, k_len)),
        dim=draw(st.sampled_from([4, 8, 16])),
        seed=draw(st.integers(0, 2**16)),
        cfg=rr.RRConfig(
            stride=stride,
            block_size=block,
            tau=draw(st.floats(0.05, 1.0)),
            head_shift=draw(st.sampled_from(rr.HEAD_SHIFTS)),
            selector=draw(st.sampled_from(rr.SELECTORS)),
            force_sink=draw(st.booleans()),
            force_diagonal=draw(st.booleans()),
            dense_last_query_block=draw(st.booleans()),
            exact_stride_causal=draw(st.booleans()),
            seed=draw(st.integers(0, 100)),
            min_sparse_len=0,
        ),
    )


def _inputs(p):
    return make_qkv(p["batch"], p["q_heads"], p["kv_heads"], p["q_len"], p["k_len"], p["dim"], seed=p["seed"])


@given(problems())
def test_selection_invariants(p):
    q, k, _ = _inputs(p)
    cfg, q_len, k_len = p["cfg"], p["q_len"], p["k_len"]
    scores = rr.estimate_block_scores(q, k, cfg, layer=1)
    mask = rr.select_blocks(scores, cfg, q_len=q_len, k_len=k_len)
    visible = visible_blocks(q_len, k_len, cfg.block_size)
    forced = forced_blocks(
        q_len, k_len, cfg.block_size, force_sink=cfg.force_sink, force_diagonal=cfg.force_diagonal,
        dense_last_query_block=cfg.dense_last_query_block,
    )
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert not bool((mask & ~visible).any()), "keep ⊆ visible"
    assert bool((mask | ~forced).all()), "forced blocks present"
    assert not bool((scores * ~visible).any()), "the estimator puts no mass on invisible blocks"
    total = scores.sum(-1)
    kept = (scores * mask).sum(-1)
    assert bool((kept >= cfg.tau * total - 1e-5 * total - 1e-6).all()), "selected mass ≥ τ·T"
    assert torch.equal(mask, rr.select_blocks(scores.clone(), cfg, q_len=q_len, k_len=k_len)), "deterministic"
    # τ = 1 keeps every visible block with positive mass
    full = rr.select_blocks(scores, rr.RRConfig(**{**cfg.to_dict(), "tau": 1.0}), q_len=q_len, k_len=k_len)
    assert torch.equal(full & visible & (scores > 0), visible & (scores > 0))


@given(problems(), st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_selection_is_monotone_in_tau(p, tau_a, tau_b):
    q, k, _ = _inputs(p)
    lo, hi = sorted((tau_a, tau_b))
    scores = rr.estimate_block_scores(q, k, p["cfg"])
    masks = [
        rr.select_blocks(scores, rr.RRConfig(**{**p["cfg"].to_dict(), "tau": t}), q_len=p["q_len"], k_len=p["k_len"])
        for t in (lo, hi)
    ]
    assert not bool((masks[0] & ~masks[1]).any())


@settings(max_examples=15)
@given(problems(max_len=70))
def test_estimator_matches_the_literal_oracle(p):
    cfg = p["cfg"]
    if cfg.head_shift == "random":
        cfg = rr.RRConfig(**{**cfg.to_dict(), "head_shift": "fixed"})
    q, k, _ = _inputs(p)
    got = rr.estimate_block_scores(q, k, cfg)
    offsets = oracle.offsets(cfg.head_shift, p["q_heads"], p["kv_heads"], cfg.stride)
    for b in range(p["batch"]):
        want = oracle.block_scores(q[b].numpy(), k[b].numpy(), cfg.stride, cfg.block_size, offsets, cfg.exact_stride_causal)
        np.testing.assert_allclose(got[b].double().numpy(), want, atol=2e-5, rtol=1e-5)


@given(problems())
def test_all_visible_mask_reproduces_dense_causal_sdpa(p):
    q, k, v = _inputs(p)
    bk = p["cfg"].block_size
    out = rr.block_sparse_attention(q, k, v, visible_blocks(p["q_len"], p["k_len"], bk)[None, None], block_size=bk)
    group = p["q_heads"] // p["kv_heads"]
    want = F.scaled_dot_product_attention(
        q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), attn_mask=causal_lower_right(p["q_len"], p["k_len"])
    )
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


@given(problems())
def test_gqa_equals_repeated_kv_mha(p):
    cfg = p["cfg"]
    if cfg.head_shift == "group_round_robin":  # its offsets depend on G by design
        return
    q, k, v = _inputs(p)
    group = p["q_heads"] // p["kv_heads"]
    out, stats = rr.rr_attention(q, k, v, cfg, return_stats=True)
    mha, mha_stats = rr.rr_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), cfg, return_stats=True)
    assert torch.equal(stats.block_mask, mha_stats.block_mask)
    torch.testing.assert_close(out, mha, atol=1e-6, rtol=1e-6)


@given(problems(), st.lists(st.integers(1, 160), min_size=1, max_size=3), st.data())
def test_varlen_equals_per_sequence_runs(p, k_lens, data):
    """Each packed sequence is computed as if alone: its neighbours never influence it."""
    cfg, hq, hkv, dim = p["cfg"], p["q_heads"], p["kv_heads"], p["dim"]
    q_lens = [data.draw(st.integers(1, n)) for n in k_lens]
    seqs = [make_qkv(1, hq, hkv, lq, lk, dim, seed=p["seed"] + i) for i, (lq, lk) in enumerate(zip(q_lens, k_lens))]
    pack = lambda xs: torch.cat([x[0].transpose(0, 1) for x in xs])  # noqa: E731
    cu = lambda lens: torch.tensor([0, *lens]).cumsum(0).to(torch.int32)  # noqa: E731
    q, k, v = pack([s[0] for s in seqs]), pack([s[1] for s in seqs]), pack([s[2] for s in seqs])
    out = rr.rr_attention_varlen(q, k, v, cu(q_lens), cu(k_lens), max(q_lens), max(k_lens), cfg, layer=2)
    offset = 0
    for (qs, ks, vs), n in zip(seqs, q_lens):
        want = rr.rr_attention(qs, ks, vs, cfg, layer=2)[0].transpose(0, 1)
        torch.testing.assert_close(out[offset : offset + n], want, atol=0, rtol=0)
        offset += n
