"""Baselines behind the method registry: semantics on small hand-computed cases, shared invariants."""

import math

import numpy as np
import pytest
import torch

import rrattention as rr
from rrattention import backends, methods
from rrattention.methods.flexprefill import js_distance
from rrattention.methods.vertical_slash import slash_blocks
from rrattention.reference import antidiagonal_block_scores
from rrattention.reference import visible_blocks
from tests.helpers import make_qkv

SMALL = {
    "full": {"block_size": 32},
    "rrattention": {"block_size": 32, "stride": 4, "tau": 0.8},
    "xattention": {"block_size": 32, "stride": 4, "tau": 0.8},
    "flexprefill": {"block_size": 32, "gamma": 0.8},
    "vertical_slash": {"block_size": 32, "last_q": 16, "vertical_size": 40, "slash_size": 60},
    "a_shape": {"block_size": 32, "local_blocks": 3},
}


def _cfg(name, **extra):
    return methods.make_config(name, {**SMALL[name], "min_sparse_len": 0, **extra})


def test_registry():
    assert methods.available() == ["full", "rrattention", "xattention", "flexprefill", "vertical_slash", "a_shape"]
    assert methods.get("xattention").config_class is methods.XAttentionConfig
    assert methods.for_config(rr.RRConfig()).name == "rrattention"
    with pytest.raises(ValueError, match="method must be one of 'full', 'rrattention'.*got 'minference'"):
        methods.get("minference")
    with pytest.raises(ValueError, match=r"unknown XAttentionConfig field\(s\) \['gamma'\]"):
        methods.make_config("xattention", {"gamma": 0.9})
    for name, kwargs, message in [
        ("xattention", {"stride": 5}, "block_size must be a multiple of stride"),
        ("xattention", {"tau": 0}, r"tau must be in \(0, 1\]"),
        ("flexprefill", {"gamma": 1.5}, r"gamma must be in \(0, 1\]"),
        ("flexprefill", {"tau": -0.1}, r"tau \(Jensen-Shannon distance threshold\) must be a float in \[0, 1\]"),
        ("flexprefill", {"min_budget": 4, "max_budget": 2}, r"max_budget must be >= min_budget \(4\)"),
        ("vertical_slash", {"last_q": 0}, "last_q must be >= 1"),
        ("a_shape", {"local_blocks": 0}, "local_blocks must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            methods.make_config(name, kwargs)
    cfg = methods.make_config("flexprefill", {"gamma": 0.95, "layer_overrides": {2: {"tau": 0.2}}})
    assert type(cfg).from_dict(cfg.to_dict()) == cfg and cfg.for_layer(2).tau == 0.2


@pytest.mark.parametrize("name", methods.available())
def test_shared_invariants(name):
    q, k, v = make_qkv(2, 6, 2, 150, 230, 16, seed=3)
    cfg = _cfg(name)
    mask = methods.get(name).estimate(q, k, cfg)
    visible = visible_blocks(150, 230, 32)
    assert mask.shape == (2, 6, 5, 8) and mask.dtype == torch.bool
    assert not bool((mask & ~visible).any())
    assert bool(mask[..., 0].all())  # every method keeps the sink
    diag = (torch.clamp((torch.arange(5) + 1) * 32, max=150) - 1 + 80) // 32
    assert bool(mask[:, :, torch.arange(5), diag].all())  # and the diagonal
    # batch rows and GQA groups are independent; repeated KV gives the same mask
    assert torch.equal(methods.get(name).estimate(q[1:], k[1:], cfg), mask[1:])
    assert torch.equal(methods.get(name).estimate(q, k.repeat_interleave(3, 1), cfg), mask)
    # the shared pipeline runs it with the shared kernel
    out, stats = rr.rr_attention(q, k, v, cfg, return_stats=True)
    want = rr.block_sparse_attention(q, k, v, stats.block_mask, block_size=32)
    if name == "full":
        assert stats.dense_reasons == ("method 'full' is dense",) * 2 and stats.sparsity == 0.0
        want = rr.reference.dense_causal_attention(q, k, v, scale=0.25)
    else:
        assert torch.equal(stats.block_mask, mask) and stats.backends["method"] == name
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_a_shape_pattern():
    q, k, _ = make_qkv(1, 1, 1, 300, 320, 8)  # δ = 20: row i's last query is key min(32(i+1), 300) − 1 + 20
    mask = methods.get("a_shape").estimate(q, k, _cfg("a_shape", sink_blocks=1, local_blocks=3))[0, 0]
    rows = [set(torch.nonzero(r).flatten().tolist()) for r in mask]
    # diagonal blocks 1, 2, 3, 4, …, 6 (row 5), …, 9 (row 9); the window is the diagonal and the 2 before it
    assert rows[0] == {0, 1} and rows[1] == {0, 1, 2} and rows[2] == {0, 1, 2, 3} and rows[3] == {0, 2, 3, 4}
    assert rows[5] == {0, 4, 5, 6} and rows[9] == {0, 7, 8, 9}


def _naive_antidiagonal(q, k, stride, block, scale):
    """Token-loop oracle of XAttention's estimator, float64 (q [H, Lq, D], k [H, Lk, D], MHA)."""
    heads, q_len, dim = q.shape
    k_len = k.shape[1]
    n_q, n_k, r = math.ceil(q_len / stride), math.ceil(k_len / stride), block // stride
    out = np.zeros((heads, math.ceil(q_len / block), math.ceil(k_len / block)))
    for h in range(heads):
        for m in range(n_q):
            last = min(m * stride + stride, q_len) - 1 + (k_len - q_len)
            z = np.full(n_k, -np.inf)
            for n in range(n_k):
                if n * stride > last:
                    continue
                z[n] = sum(float(q[h, m * stride + stride - 1 - j] @ k[h, n * stride + j])
                           for j in range(stride) if m * stride + stride - 1 - j < q_len and n * stride + j < k_len)
                z[n] *= scale / stride
            p = np.exp(z - z.max())
            p /= p.sum()
            for n in range(n_k):
                out[h, m // r, n // r] += p[n]
    return out


def test_xattention_estimator_matches_token_loop_oracle():
    q, k, _ = make_qkv(1, 2, 2, 45, 70, 4, seed=1)
    got = antidiagonal_block_scores(q, k, stride=4, block_size=16)[0].double().numpy()
    want = _naive_antidiagonal(q[0].double().numpy(), k[0].double().numpy(), 4, 16, 0.5)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
    small_chunks = antidiagonal_block_scores(q, k, stride=4, block_size=16, max_chunk_elements=1)
    torch.testing.assert_close(small_chunks[0].double(), torch.from_numpy(want), atol=1e-6, rtol=1e-6)


def test_xattention_selects_forced_blocks_first():
    # the §5.2 row: forced (sink + diagonal) mass 13.2 of 16; τ = 0.9 → one more block (2.0)
    scores = torch.zeros(1, 1, 5, 5)
    scores[0, 0, -1] = torch.tensor([5.0, 0.5, 2.0, 0.3, 8.2])
    cfg = _cfg("xattention", tau=0.9, block_size=16, stride=4)
    select = lambda cfg: methods.get("xattention").prepare(cfg, None, 1.0)[-1]  # noqa: E731
    reference = backends.get("reference")
    mask = reference.select(scores, select(cfg), 80, 80).block_mask
    assert mask[0, 0, -1].tolist() == [True, False, True, False, True]
    no_recent = reference.select(scores, select(_cfg("xattention", tau=0.9, block_size=16, stride=4, keep_recent=False)),
                                 80, 80).block_mask
    assert no_recent[0, 0, 1].tolist()[:2] == [True, False]  # keep_recent=False: no diagonal block forced


def test_vertical_slash_blocks():
    kept = torch.zeros(1, 1, 256, dtype=torch.bool)
    kept[0, 0, 0] = True  # the main diagonal only
    assert torch.equal(slash_blocks(kept, 256, 256, 64)[0, 0], torch.eye(4, dtype=torch.bool))
    kept[0, 0, 0], kept[0, 0, 100] = False, True  # offset 100 crosses blocks (i, i−1) and (i, i−2)
    got = slash_blocks(kept, 256, 256, 64)[0, 0]
    want = torch.zeros(4, 4, dtype=torch.bool)
    for i in range(4):
        for j in range(4):
            offsets = {qp - kp for qp in range(64 * i, 64 * i + 64) for kp in range(64 * j, 64 * j + 64)}
            want[i, j] = 100 in offsets
    assert torch.equal(got, want)
    # a key every query attends to is a vertical line: its block is kept in every row
    q, k, _ = make_qkv(1, 1, 1, 320, 320, 8, seed=2)
    k[0, 0, 150] = q[0, 0].mean(0) * 50
    mask = methods.get("vertical_slash").estimate(q, k, _cfg("vertical_slash", vertical_size=1, slash_size=1))[0, 0]
    assert bool(mask[4:, 4].all())


def test_flexprefill_pattern_choice_and_budgets():
    p = torch.tensor([0.5, 0.5, 0.0])
    assert float(js_distance(p, p)) == 0.0
    assert abs(float(js_distance(p, torch.tensor([0.0, 0.0, 1.0]))) - math.sqrt(math.log(2))) < 1e-6
    q, k, _ = make_qkv(1, 4, 2, 640, 640, 16, seed=4)
    estimate = methods.get("flexprefill").estimate
    query_aware = estimate(q, k, _cfg("flexprefill", tau=1.0))  # every head query-aware (distance < 0.84)
    vertical_slash = estimate(q, k, _cfg("flexprefill", tau=0.0))  # none
    assert not torch.equal(query_aware, vertical_slash)
    # more mass to cover keeps more blocks
    assert int(estimate(q, k, _cfg("flexprefill", tau=0.0, gamma=0.99)).sum()) >= int(vertical_slash.sum())
    capped = estimate(q, k, _cfg("flexprefill", tau=0.0, gamma=0.99, max_budget=1))
    assert int(capped.sum()) <= int(vertical_slash.sum())


@pytest.mark.parametrize("name", ["xattention", "flexprefill", "vertical_slash"])
def test_varlen_with_a_method_equals_each_sequence(name):
    cfg = _cfg(name)
    seqs = [make_qkv(1, 4, 2, lq, lk, 16, seed=lq) for lq, lk in ((100, 100), (70, 150))]
    pack = lambda xs: torch.cat([x[0].transpose(0, 1) for x in xs])  # noqa: E731
    q, k, v = (pack([s[i] for s in seqs]) for i in range(3))
    cu_q, cu_k = torch.tensor([0, 100, 170], dtype=torch.int32), torch.tensor([0, 100, 250], dtype=torch.int32)
    out = rr.rr_attention_varlen(q, k, v, cu_q, cu_k, 100, 150, cfg)
    for s, (qs, ks, vs) in enumerate(seqs):
        torch.testing.assert_close(out[cu_q[s] : cu_q[s + 1]], rr.rr_attention(qs, ks, vs, cfg)[0].transpose(0, 1))


def test_diagonal_sums_against_a_loop():
    from rrattention.methods.base import diagonal_sums, last_queries_attention

    q, k, _ = make_qkv(2, 3, 3, 40, 57, 8, seed=6)
    attn = last_queries_attention(q, k, 9, 0.3)
    want = torch.zeros(2, 3, 57)
    for r in range(9):
        for j in range(57):
            offset = (57 - 9 + r) - j
            if offset >= 0:
                want[:, :, offset] += attn[:, :, r, j]
    torch.testing.assert_close(diagonal_sums(attn), want)
