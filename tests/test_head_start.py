"""Spec §2 under tensor parallelism: a call that holds a slice of the model's query heads samples
with the global head index (``head_start + h``), so the ranks' selections, put side by side, are
exactly one device's. Reference, Triton kernel (CPU interpreter without a GPU) and the public
functions, padded and packed."""

import pytest
import torch

import rrattention as rr
from rrattention.reference import head_offsets
from tests.helpers import make_qkv

POLICIES = ["round_robin", "fixed", "random", "group_round_robin"]


def _ranks(tp: int, hq: int, hkv: int):
    """``(head_start, q-head slice, kv-head slice)`` of each rank, as vLLM shards a model: query
    heads split evenly, KV heads split when ``tp <= Hkv`` and replicated (one per rank) otherwise."""
    h_local = hq // tp
    for p in range(tp):
        first_q = p * h_local
        if tp <= hkv:
            kv_local = hkv // tp
            kv = slice(p * kv_local, (p + 1) * kv_local)
        else:
            g = hq // hkv
            kv = slice(first_q // g, first_q // g + 1)
        yield first_q, slice(first_q, first_q + h_local), kv


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("hq, hkv, tp", [(8, 2, 2), (32, 8, 4), (28, 4, 4), (16, 2, 2), (9, 3, 3)])
def test_reference_offsets_of_a_slice_are_the_global_ones(policy, hq, hkv, tp):
    whole = head_offsets(hq, hkv, 8, policy, layer=4, seed=3)
    got = [head_offsets(q.stop - q.start, kv.stop - kv.start, 8, policy, layer=4, seed=3, head_start=start)
           for start, q, kv in _ranks(tp, hq, hkv)]
    assert torch.equal(torch.cat(got), whole)


@pytest.mark.parametrize("policy", ["round_robin", "fixed", "random"])
def test_replicated_kv_heads_keep_the_global_offsets(policy):
    # tp = 4 > Hkv = 2: each rank holds 2 query heads of one (replicated) KV head
    whole = head_offsets(8, 2, 8, policy, layer=1, seed=9)
    got = [head_offsets(2, 1, 8, policy, layer=1, seed=9, head_start=start) for start, _, _ in _ranks(4, 8, 2)]
    assert torch.equal(torch.cat(got), whole)


def test_head_start_shifts_round_robin():
    assert head_offsets(4, 2, 8, head_start=4).tolist() == [4, 5, 6, 7]
    assert head_offsets(4, 2, 8, head_start=6).tolist() == [6, 7, 0, 1]
    assert head_offsets(4, 2, 8, head_start=0).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("head_start", [4, 6, 13])
def test_kernel_matches_reference_with_a_head_offset(policy, head_start):
    pytest.importorskip("triton")
    from rrattention.kernels.estimate import estimate_block_scores as estimate_kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, _ = make_qkv(1, 4, 2, 200, 260, 32, seed=head_start, device=device)
    cfg = rr.RRConfig(stride=8, block_size=64, head_shift=policy, seed=7)
    want = rr.estimate_block_scores(q, k, cfg, layer=2, backend="reference", head_start=head_start)
    assert not torch.equal(want, rr.estimate_block_scores(q, k, cfg, layer=2, backend="reference")) or policy == "fixed"
    got = estimate_kernel(q, k, stride=8, block_size=64, head_shift=policy, scale=32**-0.5, layer=2, seed=7,
                          head_start=head_start, out=torch.full_like(want, float("nan")),
                          config=None if device == "cuda" else dict(ROWS=64, BLOCK_N=32))
    assert not bool(got.isnan().any())
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)


def test_packed_kernel_matches_reference_with_a_head_offset():
    pytest.importorskip("triton")
    from rrattention.kernels.estimate import estimate_block_scores as estimate_kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    lens = [(70, 150), (130, 130)]
    seqs = [make_qkv(1, 4, 2, lq, lk, 32, seed=i, device=device) for i, (lq, lk) in enumerate(lens)]
    q = torch.cat([s[0][0].transpose(0, 1) for s in seqs])
    k = torch.cat([s[1][0].transpose(0, 1) for s in seqs])
    cu_q = torch.tensor([0, 70, 200], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 150, 280], dtype=torch.int32, device=device)
    got = estimate_kernel(q, k, stride=8, block_size=64, head_shift="round_robin", scale=32**-0.5, head_start=4,
                          cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=130, max_seqlen_k=150,
                          config=None if device == "cuda" else dict(ROWS=64, BLOCK_N=32))
    cfg = rr.RRConfig(stride=8, block_size=64)
    for s, (qs, ks, _) in enumerate(seqs):
        want = rr.estimate_block_scores(qs, ks, cfg, backend="reference", head_start=4)[0]
        torch.testing.assert_close(got[s, :, : want.shape[1], : want.shape[2]], want, atol=2e-6, rtol=2e-6)


def _run(q, k, v, cfg, backend, head_start=0):
    """``(out, block mask)`` of layer 1 from the public function (reference backend), or ``(None,
    mask)`` from the plan's estimator and selection over the Triton backend (which dispatch keeps
    to CUDA tensors; the attention kernel is checked against the reference in test_kernels)."""
    if backend == "reference":
        out, stats = rr.rr_attention(q, k, v, cfg, layer=1, return_stats=True, backend=backend, head_start=head_start)
        return out, stats.block_mask
    from rrattention import backends

    ops = backends.StageBackends(*[backends.get("triton")] * 3)
    method = rr.methods.get("rrattention")
    prepared = method.prepare(cfg, 1, q.shape[-1] ** -0.5, head_start=head_start)
    return None, method.select(ops, q, k, prepared).block_mask


@pytest.mark.parametrize("hq, hkv, tp, backend", [
    (8, 2, 2, "reference"), (8, 4, 4, "reference"), (8, 2, 4, "reference"), (6, 3, 3, "reference"),
    (8, 2, 2, "triton"), (8, 2, 4, "triton"),  # tp = 4 > Hkv = 2: KV heads replicated
])
def test_simulated_ranks_give_the_single_device_masks_and_outputs(hq, hkv, tp, backend):
    if backend == "triton":
        pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = make_qkv(1, hq, hkv, 512, 512, 16, seed=hq + tp, device=device)
    cfg = rr.RRConfig(stride=8, block_size=64, tau=0.5, min_sparse_len=0)
    want, mask = _run(q, k, v, cfg, backend)
    ranks = [_run(q[:, qs], k[:, kvs], v[:, kvs], cfg, backend, start) for start, qs, kvs in _ranks(tp, hq, hkv)]
    assert torch.equal(torch.cat([m for _, m in ranks], 1), mask)
    if want is None:  # the kernel selects the reference's blocks, whose ranks are checked to be sensitive
        assert torch.equal(mask, _run(q, k, v, cfg, "reference")[1])
    else:
        torch.testing.assert_close(torch.cat([o for o, _ in ranks], 1), want, atol=1e-5, rtol=1e-5)
        # The test can fail: ranks that ignore their offset select differently.
        unshifted = [_run(q[:, qs], k[:, kvs], v[:, kvs], cfg, backend)[1] for _, qs, kvs in _ranks(tp, hq, hkv)]
        assert not torch.equal(torch.cat(unshifted, 1), mask)


def test_simulated_ranks_packed():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lens = [(100, 300), (256, 256)]
    seqs = [make_qkv(1, 8, 2, lq, lk, 32, seed=10 + i, device=device) for i, (lq, lk) in enumerate(lens)]
    pack = lambda i: torch.cat([s[i][0].transpose(0, 1) for s in seqs])  # noqa: E731
    q, k, v = pack(0), pack(1), pack(2)
    cu_q = torch.tensor([0, 100, 356], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 300, 556], dtype=torch.int32, device=device)
    cfg = rr.RRConfig(stride=8, block_size=64, tau=0.8, min_sparse_len=0)
    want, stats = rr.rr_attention_varlen(q, k, v, cu_q, cu_k, 256, 300, cfg, return_stats=True)
    outs, masks = [], []
    for start, qs, kvs in _ranks(2, 8, 2):
        out, st = rr.rr_attention_varlen(q[:, qs], k[:, kvs], v[:, kvs], cu_q, cu_k, 256, 300, cfg, return_stats=True,
                                         head_start=start)
        outs.append(out)
        masks.append(st.block_mask)
    assert torch.equal(torch.cat(masks, 1), stats.block_mask)
    torch.testing.assert_close(torch.cat(outs, 1), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("4", TypeError)])
def test_bad_head_start(bad, error):
    q, k, v = make_qkv(1, 2, 1, 64, 64, 16)
    with pytest.raises(error, match="head_start"):
        rr.rr_attention(q, k, v, head_start=bad)
    with pytest.raises(error, match="head_start"):
        rr.estimate_block_scores(q, k, head_start=bad)
    cu = torch.tensor([0, 64], dtype=torch.int32)
    with pytest.raises(error, match="head_start"):
        rr.rr_attention_varlen(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu, 64, 64,
                               head_start=bad)
