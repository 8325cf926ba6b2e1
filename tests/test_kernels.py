"""Triton kernels against the reference, stage by stage.

Without a GPU they run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1), at small
sizes and in fp32/fp16 only: the interpreter computes bf16 wrongly. On a GPU the same tests run
compiled, bf16 included. Outputs are poisoned with NaN first, so an unwritten element fails.
"""

import dataclasses
import itertools

import pytest
import torch

pytest.importorskip("triton")

import rrattention as rr  # noqa: E402
from rrattention.kernels.block_sparse_attention import block_sparse_attention as attention_kernel  # noqa: E402
from rrattention.kernels.estimate import estimate_block_scores as estimate_kernel  # noqa: E402
from rrattention.kernels.select import select_blocks as select_kernel  # noqa: E402
from rrattention import backends  # noqa: E402
from tests.helpers import make_qkv  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if GPU else [])
SMALL = dict(ROWS=64, BLOCK_N=32)  # small tiles keep the interpreter fast; GPU runs use the defaults


def _estimate_config():
    return None if GPU else SMALL


@pytest.mark.parametrize(
    "batch, hq, hkv, lq, lk, dim, stride, block, policy, exact",
    [
        (1, 2, 1, 200, 330, 64, 8, 64, "round_robin", False),
        (2, 4, 2, 129, 129, 32, 4, 128, "random", False),
        (1, 6, 2, 300, 300, 64, 8, 128, "group_round_robin", True),
        (1, 7, 1, 250, 390, 16, 8, 64, "fixed", True),
        (1, 3, 3, 64, 64, 128, 16, 64, "round_robin", False),
        (1, 2, 1, 1000, 1000, 32, 4, 64, "round_robin", True),  # mask-free tiles before the diagonal
        (1, 16, 1, 140, 140, 16, 4, 128, "random", False),  # 16 heads in one group, R = 32 rows per query block
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_estimator_matches_reference(batch, hq, hkv, lq, lk, dim, stride, block, policy, exact, dtype):
    q, k, _ = make_qkv(batch, hq, hkv, lq, lk, dim, dtype=dtype, device=DEVICE, seed=lq)
    cfg = rr.RRConfig(stride=stride, block_size=block, head_shift=policy, exact_stride_causal=exact, seed=5)
    want = rr.estimate_block_scores(q, k, cfg, layer=3, backend="reference")
    poisoned = torch.full_like(want, float("nan"))
    got = estimate_kernel(
        q, k, stride=stride, block_size=block, head_shift=policy, scale=dim**-0.5, layer=3, seed=5,
        exact_stride_causal=exact, out=poisoned, config=_estimate_config(),
    )
    assert not bool(got.isnan().any())
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("dtype, q_scale, k_scale", [
    (torch.bfloat16, 2.0**20, 2.0**-24),  # q past fp16's range, keys below its normal range
    (torch.bfloat16, 2.0**-30, 2.0**30),
    (torch.float16, 2.0**10, 2.0**-14),  # unscaled, the means would be subnormal fp16
])
def test_exact_estimator_scales_16_bit_rows_into_fp16s_range(dtype, q_scale, k_scale):
    """The exact mode computes in fp16 whatever the 16-bit input: each sampled row and each stride
    mean is scaled by a power of two first, so magnitudes that fp16 cannot hold score like fp32."""
    q, k, _ = make_qkv(1, 4, 2, 300, 300, 32, seed=11, device=DEVICE)
    q, k = q * q_scale, k * k_scale
    # rows that heads 1-3 sample (offsets 1-3 of the 4 heads' round robin): one far below the
    # others, one zero, one so small that its scale 2^−e_r times the logit scale is below fp32's
    # normal range (zero in fp16)
    q[..., 19, :] *= 2.0**-40
    q[..., 9, :] = 0.0
    q[..., 18, :] = q[..., 18, :].sign() * 2.0**-118
    k[..., 16:24, :] *= 2.0**-40  # and a whole stride of keys
    q, k = q.to(dtype), k.to(dtype)
    cfg = rr.RRConfig(stride=8, block_size=64, exact_stride_causal=True)
    want = rr.estimate_block_scores(q, k, cfg, backend="reference")
    assert bool(torch.isfinite(q).all() and torch.isfinite(k).all())
    got = estimate_kernel(q, k, stride=8, block_size=64, head_shift="round_robin", scale=32**-0.5,
                          exact_stride_causal=True, config=_estimate_config())
    assert not bool(got.isnan().any())
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("dtype, factor", [(torch.bfloat16, 2.0**20), (torch.float16, 2.0**12)])
def test_exact_estimator_keeps_means_far_below_their_tiles_largest(dtype, factor):
    """The exact mode scales the means by one power of two per tile of strides: one stride's
    elements ``factor`` above the rest (in a dimension the sampled rows do not use, so the logits
    stay ordinary) leave the others' low fp16 terms subnormal, and their logits must still score
    like fp32."""
    q, k, _ = make_qkv(1, 2, 1, 256, 256, 32, seed=5, device=DEVICE)
    q[..., 0] = 0.0
    k[..., 16:24, 0] *= factor
    q, k = q.to(dtype), k.to(dtype)
    assert bool(torch.isfinite(k).all())
    cfg = rr.RRConfig(stride=8, block_size=64)
    want = rr.estimate_block_scores(q, k, cfg, backend="reference")
    got = estimate_kernel(q, k, stride=8, block_size=64, head_shift="round_robin", scale=32**-0.5,
                          config=_estimate_config())
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)
    fast = estimate_kernel(q, k, stride=8, block_size=64, head_shift="round_robin", scale=32**-0.5,
                           precision="fast", config=_estimate_config())
    assert float((fast - want).abs().max()) > 2e-6  # the case needs the second term


def test_estimator_refuses_a_number_of_mean_terms_its_inputs_cannot_take():
    q, k, _ = make_qkv(1, 2, 1, 128, 128, 16, device=DEVICE)
    common = dict(stride=8, block_size=64, head_shift="round_robin", scale=0.25)
    with pytest.raises(ValueError, match="SPLITS=3"):
        estimate_kernel(q.half(), k.half(), config={"SPLITS": 3}, **common)
    with pytest.raises(ValueError, match="SPLITS=2"):
        estimate_kernel(q, k, config={"SPLITS": 2}, **common)  # fp32 means are exact in one term


@pytest.mark.parametrize("lq, lk, exact", [(200, 330, False), (300, 300, True)])
@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if GPU else []))
def test_fast_estimator_matches_the_reference_rounding_the_same_way(lq, lk, exact, dtype):
    q, k, _ = make_qkv(1, 4, 2, lq, lk, 64, dtype=dtype, device=DEVICE, seed=lq + 1)
    fast = rr.RRConfig(stride=8, block_size=64, exact_stride_causal=exact, estimator_precision="fast")
    want = rr.estimate_block_scores(q, k, fast, backend="reference")
    got = estimate_kernel(q, k, stride=8, block_size=64, head_shift="round_robin", scale=64**-0.5,
                          exact_stride_causal=exact, precision="fast", config=_estimate_config())
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)
    exact_scores = rr.estimate_block_scores(q, k, dataclasses.replace(fast, estimator_precision="exact"), backend="reference")
    assert float((want - exact_scores).abs().max()) > 1e-6  # the rounded means do change the scores


def test_fp32_inputs_are_exact_in_either_mode():
    q, k, _ = make_qkv(1, 2, 1, 200, 200, 32, dtype=torch.float32, device=DEVICE, seed=9)
    cfg = rr.RRConfig(stride=8, block_size=64)
    exact = rr.estimate_block_scores(q, k, cfg, backend="reference")
    fast = rr.estimate_block_scores(q, k, dataclasses.replace(cfg, estimator_precision="fast"), backend="reference")
    got = estimate_kernel(q, k, stride=8, block_size=64, head_shift="round_robin", scale=32**-0.5, precision="fast",
                          config=_estimate_config())
    assert torch.equal(exact, fast)
    torch.testing.assert_close(got, exact, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("programs", [1, 2, 5, 1000])
def test_estimator_scores_do_not_depend_on_how_many_persistent_programs_share_the_work(programs):
    # 2 sequences × 2 KV heads × 5 row chunks: one program takes all 20 items, 1000 leave most idle
    q, k, _ = make_qkv(2, 4, 2, 600, 600, 16, device=DEVICE, seed=4)
    common = dict(stride=4, block_size=64, head_shift="round_robin", scale=0.25, exact_stride_causal=True)
    want = rr.estimate_block_scores(q, k, rr.RRConfig(stride=4, block_size=64, exact_stride_causal=True),
                                    backend="reference")
    got = estimate_kernel(q, k, out=torch.full_like(want, float("nan")), config={**SMALL, "PROGRAMS": programs},
                          **common)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)
    assert torch.equal(got, estimate_kernel(q, k, config=SMALL, **common))


@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("packed", [False, True])
def test_means_through_descriptors_score_as_pointer_loads(precision, packed):
    """Descriptors load whole tiles of the means' ``[rows, D]`` view, so a head's last tile runs on
    into the next head's or sequence's strides (42 strides per head here, tiles of 32 on the CPU and
    128 on a GPU): the causal mask must drop them. Large keys in the next head make any that leaked
    change the scores."""
    q, k, _ = make_qkv(2, 4, 2, 330, 330, 64, dtype=torch.float16, device=DEVICE, seed=21)
    k[:, 1] *= 8
    common = dict(stride=8, block_size=64, head_shift="round_robin", scale=64**-0.5, precision=precision,
                  exact_stride_causal=True, config=_estimate_config())
    if packed:  # sequences of 200 and 330 tokens, one after another
        q = torch.cat([q[0, :, :200], q[1]], 1).transpose(0, 1).contiguous()
        k = torch.cat([k[0, :, :200], k[1]], 1).transpose(0, 1).contiguous()
        cu = torch.tensor([0, 200, 530], dtype=torch.int32, device=DEVICE)
        common.update(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=330, max_seqlen_k=330)
    pointers = estimate_kernel(q, k, tma=False, **common)
    got = estimate_kernel(q, k, tma=True, out=torch.full_like(pointers, float("nan")) if not packed else None, **common)
    assert torch.equal(got, pointers)
    if not packed:
        cfg = rr.RRConfig(stride=8, block_size=64, exact_stride_causal=True, estimator_precision=precision)
        torch.testing.assert_close(got, rr.estimate_block_scores(q, k, cfg, backend="reference"), atol=2e-6, rtol=2e-6)


def test_means_through_descriptors_only_where_they_can_be():
    from rrattention.kernels.estimate import means_tma_supported

    q, k, _ = make_qkv(1, 2, 1, 128, 128, 64, device=DEVICE)
    common = dict(stride=8, block_size=64, head_shift="round_robin", scale=0.125, tma=True)
    with pytest.raises(ValueError, match="tma=True needs stride means"):
        estimate_kernel(q, k, **common)  # fp32 means
    with pytest.raises(ValueError, match="tma=True needs stride means"):
        estimate_kernel(q.half(), k.half(), antidiagonal=True, **common)  # no means to load
    with pytest.raises(ValueError, match="tma=True needs stride means"):
        estimate_kernel(q.half()[..., :48], k.half()[..., :48], **common)  # no power-of-two head dim
    assert not means_tma_supported(torch.device("cpu"), torch.float16, 64, False)
    if GPU and torch.cuda.get_device_capability()[0] >= 9:
        assert means_tma_supported(q.device, torch.bfloat16, 128, False)
        assert not means_tma_supported(q.device, torch.bfloat16, 128, True)
        assert not means_tma_supported(q.device, torch.float32, 128, False)
        assert not means_tma_supported(q.device, torch.bfloat16, 256, False)  # not measured
        assert means_tma_supported(q.device, torch.bfloat16, 64, False)  # once its items fill the programs


@pytest.mark.parametrize("batch, heads, length, head_dim, precision, want_tma, want_rows", [
    (1, (9, 3), 32768, 64, "exact", False, 64),  # 1.1 rounds of 264 programs: measured slower
    (1, (9, 3), 65536, 64, "fast", False, 64),  # 2.2 rounds: not measured
    (1, (9, 3), 131072, 64, "exact", True, 128),  # 4.4 rounds: measured faster
    (1, (9, 3), 131072, 64, "fast", True, 128),
    (4, (9, 3), 32768, 64, "fast", True, 128),  # a batch fills the rounds at a shorter length
    (1, (32, 8), 8192, 128, "exact", True, 128),  # D=128: at every length
    (1, (32, 8), 8192, 128, "fast", True, 128),
    (1, (8, 2), 131072, 256, "exact", False, 128),  # no descriptor entry measured
])
def test_means_descriptors_by_rounds_of_the_programs(batch, heads, length, head_dim, precision, want_tma, want_rows):
    """The default dispatch on an H200-sized GPU (132 multiprocessors), from the launch geometry alone:
    D=64 reads the means through descriptors once its 128-row items fill 4 rounds of the programs."""
    from rrattention.kernels.estimate import _estimate_geometry

    q_shape, k_shape = (batch, heads[0], length, head_dim), (batch, heads[1], length, head_dim)
    contiguous = lambda shape: torch.empty(shape, device="meta").stride()  # noqa: E731
    config = (("SPLITS", 1),) if precision == "fast" else ()

    def geometry(tma, forced):
        return _estimate_geometry(q_shape, contiguous(q_shape), k_shape, contiguous(k_shape), torch.bfloat16, 132,
                                  None, None, None, 8, 128, "round_robin", head_dim**-0.5, 0, 0, False, False, config,
                                  tma, forced)

    default = geometry(True, False).constexprs
    assert (default["TMA"], default["ROWS"]) == (want_tma, want_rows)
    assert not geometry(False, False).constexprs["TMA"]
    forced = geometry(True, True).constexprs  # forced descriptors use the descriptor entry at any length
    assert forced["TMA"] and forced["ROWS"] == (128 if head_dim in (64, 128) else want_rows)


@pytest.mark.parametrize(
    "selector, flags, tau",
    list(itertools.product(["top_tau", "forced_first"], [(True, True, True), (False, True, False), (False, False, False)], [0.6, 1.0])),
)
def test_selection_matches_reference(selector, flags, tau):
    sink, diagonal, last = flags
    q, k, _ = make_qkv(1, 2, 1, 330, 520, 16, device=DEVICE)
    cfg = rr.RRConfig(block_size=64, tau=tau, selector=selector, force_sink=sink, force_diagonal=diagonal,
                      dense_last_query_block=last)
    scores = rr.estimate_block_scores(q, k, cfg, backend="reference")
    scores[0, 0, 2, 1] = scores[0, 0, 2, 2]  # an exact tie: lower block index ranks first
    want = rr.select_blocks(scores, cfg, q_len=330, k_len=520, backend="reference")
    mask, count, index = select_kernel(
        scores, q_len=330, k_len=520, block_size=64, tau=tau, selector=selector,
        force_sink=sink, force_diagonal=diagonal, dense_last_query_block=last,
    )
    assert torch.equal(mask, want)
    want_count, want_index = rr.to_kv_index(want)
    assert torch.equal(count, want_count) and torch.equal(index, want_index)


@pytest.mark.parametrize("q_len, k_len, stray_mass, tau", [(65 * 64, 65 * 64, True, 0.6), (40 * 64 + 7, 65 * 64 - 5, False, 0.95)])
def test_selection_on_narrow_tiles_matches_reference(q_len, k_len, stray_mass, tau):
    """Rows of 65 key blocks (a 128-column tile) sort on 16/32/64/128-column tiles by their extent;
    mass past the diagonal (another estimator's scores) widens a row's tile, never drops it."""
    g = torch.Generator().manual_seed(q_len + stray_mass)
    nbq, nbk = -(-q_len // 64), -(-k_len // 64)
    scores = torch.rand(1, 1, nbq, nbk, generator=g) ** 4
    rows = torch.arange(nbq)[:, None]
    visible = torch.arange(nbk)[None, :] * 64 <= torch.clamp((rows + 1) * 64, max=q_len) - 1 + (k_len - q_len)
    scores = scores * visible
    if stray_mass:
        # invisible blocks with mass: ranked first, they use up τ·T (so fewer visible blocks are kept)
        scores[0, 0, 3:30, nbk - 1] = 2 * scores[0, 0, 3:30].sum(-1)
    scores[0, 0, 5, 1] = scores[0, 0, 5, 3]  # a tie
    cfg = rr.RRConfig(block_size=64, tau=tau)
    want = rr.select_blocks(scores, cfg, q_len=q_len, k_len=k_len, backend="reference")
    mask, count, index = select_kernel(scores.to(DEVICE), q_len=q_len, k_len=k_len, block_size=64, tau=tau,
                                       selector="top_tau", force_sink=True, force_diagonal=True,
                                       dense_last_query_block=True)
    assert torch.equal(mask.cpu(), want)
    want_count, want_index = rr.to_kv_index(want)
    assert torch.equal(count.cpu(), want_count) and torch.equal(index.cpu(), want_index)


@pytest.mark.parametrize(
    "batch, hq, hkv, lq, lk, dim, block",
    [(1, 2, 1, 200, 330, 64, 64), (2, 4, 2, 129, 129, 32, 128), (1, 2, 2, 300, 300, 128, 128), (1, 1, 1, 70, 200, 256, 64)],
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tma", [None, True])  # None: as dispatch decides (pointer loads on the CPU)
def test_attention_matches_reference(batch, hq, hkv, lq, lk, dim, block, dtype, tma):
    q, k, v = make_qkv(batch, hq, hkv, lq, lk, dim, dtype=dtype, device=DEVICE, seed=dim)
    n_q, n_k = -(-lq // block), -(-lk // block)
    mask = torch.rand(batch, hq, n_q, n_k, generator=torch.Generator().manual_seed(1)).to(DEVICE) > 0.4
    mask[0, 0, -1] = False  # a row with nothing selected: zeros and LSE -inf
    count, index = rr.to_kv_index(mask)
    want, want_lse = rr.block_sparse_attention(q, k, v, mask, return_lse=True, block_size=block, backend="reference")
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:3], float("nan"), device=DEVICE)
    attention_kernel(q, k, v, count, index, block_size=block, scale=dim**-0.5, out=out, lse=lse, tma=tma)
    assert not bool(out.isnan().any() or lse.isnan().any())
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), want.float(), atol=tol, rtol=tol)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse))
    torch.testing.assert_close(lse, want_lse, atol=1e-4, rtol=1e-4)


def test_packed_sequences_in_one_launch_match_per_sequence_reference():
    lens = [(100, 100), (37, 190), (1, 50), (130, 130)]
    cfg = rr.RRConfig(stride=4, block_size=64, tau=0.8, min_sparse_len=60)
    seqs = [make_qkv(1, 4, 2, lq, lk, 32, seed=i, device=DEVICE, dtype=torch.float16) for i, (lq, lk) in enumerate(lens)]
    pack = lambda xs: torch.cat([x[0].transpose(0, 1) for x in xs])  # noqa: E731
    cu = lambda n: torch.tensor([0, *n], device=DEVICE).cumsum(0).to(torch.int32)  # noqa: E731
    q, k, v = (pack([s[i] for s in seqs]) for i in range(3))
    cu_q, cu_k = cu([a for a, _ in lens]), cu([b for _, b in lens])
    # What a plan's fused packed path runs: the method over the Triton backend's operations.
    triton_ops = backends.StageBackends(*[backends.get("triton")] * 3)
    method, packed = rr.methods.get("rrattention"), backends.Packed(cu_q, cu_k, 130, 190)
    selection = method.select(triton_ops, q, k, method.prepare(cfg, None, 32**-0.5, cfg.min_sparse_len), packed)
    out, _ = triton_ops.attention.attend(q, k, v, selection, block_size=64, scale=32**-0.5, packed=packed)
    mask = selection.block_mask
    for s, (qs, ks, vs) in enumerate(seqs):
        want, stats = rr.rr_attention(qs, ks, vs, cfg, return_stats=True, backend="reference")
        torch.testing.assert_close(out[cu_q[s] : cu_q[s + 1]].float(), want[0].transpose(0, 1).float(), atol=2e-2, rtol=2e-2)
        rows, cols = stats.block_mask.shape[-2:]
        assert torch.equal(mask[s, :, :rows, :cols].cpu(), stats.block_mask[0].cpu())  # dense sequences: every visible block
        assert not bool(mask[s, :, rows:].any() or mask[s, :, :, cols:].any())


@pytest.mark.parametrize("tma", [False, True])
def test_packed_attention_reads_no_key_of_the_next_sequence(tma):
    """Packed sequences back to back: a tile crossing one sequence's end must not see the next
    sequence's keys or values, even where those are not finite (TMA descriptors end at the tensor's end)."""
    lens = [(70, 100), (64, 64), (30, 129)]
    cu = lambda n: torch.tensor([0, *n], device=DEVICE).cumsum(0).to(torch.int32)  # noqa: E731
    cu_q, cu_k = cu([a for a, _ in lens]), cu([b for _, b in lens])
    seqs = [make_qkv(1, 2, 1, lq, lk, 32, seed=i, device=DEVICE, dtype=torch.float16) for i, (lq, lk) in enumerate(lens)]
    q, k, v = (torch.cat([s[i][0].transpose(0, 1) for s in seqs]) for i in range(3))
    v[cu_k[1] : cu_k[2]] = float("inf")  # the middle sequence's values poison any tile that reads them
    n_q, n_k = -(-max(a for a, _ in lens) // 64), -(-max(b for _, b in lens) // 64)
    mask = torch.ones(len(lens), 2, n_q, n_k, dtype=torch.bool, device=DEVICE)
    count, index = rr.to_kv_index(mask)
    out, _ = attention_kernel(q, k, v, count, index, block_size=64, scale=32**-0.5, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                              max_seqlen_q=max(a for a, _ in lens), config=dict(BLOCK_M=32, BLOCK_N=32), tma=tma)
    for s in (0, 2):
        qs, ks, vs = seqs[s]
        full = torch.ones(1, 2, -(-lens[s][0] // 64), -(-lens[s][1] // 64), dtype=torch.bool, device=DEVICE)
        want = rr.block_sparse_attention(qs, ks, vs, full, block_size=64, backend="reference")
        torch.testing.assert_close(out[cu_q[s] : cu_q[s + 1]].float(), want[0].transpose(0, 1).float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("memory", ["heads", "tokens"])  # [B, H, L, D] or a framework's [B, L, H, D]
@pytest.mark.parametrize("lq, lk", [(100, 160), (128, 128)])  # Lk inside or at the end of its last block
@pytest.mark.parametrize("heads_first", [False, True])
def test_padded_attention_reads_no_row_past_its_keys(memory, lq, lk, heads_first):
    """Keys and values are views into larger buffers whose other rows are not finite: a
    descriptor tile that crossed ``Lk`` would read them (the next head's or sequence's rows of the
    2-D view), so those tiles must be loaded with masks."""
    batch, hq, hkv, dim, block = 2, 4, 2, 32, 64
    q, k, v = make_qkv(batch, hq, hkv, lq, lk, dim, dtype=torch.float16, device=DEVICE, seed=lk)

    def poisoned_view(x):  # the same values, with 40 rows of inf after each head's (or sequence's) keys
        if memory == "heads":
            buffer = torch.full((batch, hkv, lk + 40, dim), float("inf"), dtype=x.dtype, device=DEVICE)
            buffer[:, :, :lk] = x
            return buffer[:, :, :lk]
        buffer = torch.full((batch, lk + 40, hkv, dim), float("inf"), dtype=x.dtype, device=DEVICE)
        buffer[:, :lk] = x.transpose(1, 2)
        return buffer[:, :lk].transpose(1, 2)

    kp, vp = poisoned_view(k), poisoned_view(v)
    mask = torch.ones(batch, hq, -(-lq // block), -(-lk // block), dtype=torch.bool, device=DEVICE)
    mask[1, 2, :, 1] = False
    count, index = rr.to_kv_index(mask)
    want = rr.block_sparse_attention(q, k, v, mask, block_size=block, backend="reference")
    out, _ = attention_kernel(q, kp, vp, count, index, block_size=block, scale=dim**-0.5, tma=True,
                              config=dict(BLOCK_M=32, BLOCK_N=32, HEADS_FIRST=heads_first))
    torch.testing.assert_close(out.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_row_view_addresses_every_key_row():
    from rrattention.kernels.block_sparse_attention import _row_view

    x = torch.zeros(2, 3, 10, 16)
    for view, layout in ((x, "heads"), (x.transpose(1, 2).contiguous().transpose(1, 2), "tokens"),
                         (torch.zeros(2, 10, 7, 16)[:, :, 2:5].transpose(1, 2), "tokens inside fused heads"),
                         (torch.zeros(2, 3, 12, 16)[:, :, :10], "heads with spare rows"),
                         (x[:1], "one sequence"), (torch.zeros(30, 3, 16), "packed")):
        (rows, cols), row_stride, rows_seq, rows_head, cols_head = _row_view(view.shape, view.stride())
        seqs = view.shape[0] if view.dim() == 4 else 1
        for b, h, n in itertools.product(range(seqs), range(3), range(view.shape[-2] if view.dim() == 4 else 30)):
            element = (b * rows_seq + h * rows_head + n) * row_stride + h * cols_head
            want = (view[b, h, n] if view.dim() == 4 else view[n, h]).data_ptr() - view.data_ptr()
            assert element * view.element_size() == want, layout
        assert (rows - 1) * row_stride + cols <= view.untyped_storage().nbytes() // view.element_size(), layout
    # rows of different lengths apart per sequence, and heads that overlap a row
    assert _row_view((2, 3, 10, 16), (3 * 10 * 16 + 8, 160, 16, 1)) is None
    assert _row_view((2, 3, 10, 16), (480, 8, 48, 1)) is None
    skewed = torch.zeros(2 * 3 * 10 * 16 + 16, dtype=torch.float16)[: 2 * 3 * 10 * 16 + 8].as_strided(
        (2, 3, 10, 16), (3 * 10 * 16 + 4, 160, 16, 1))
    with pytest.raises(ValueError, match="tma=True needs a power-of-two head dim"):
        attention_kernel(torch.zeros(2, 3, 10, 16, dtype=torch.float16), skewed, skewed,
                         torch.ones(2, 3, 1, dtype=torch.int32), torch.zeros(2, 3, 1, 1, dtype=torch.int32),
                         block_size=64, scale=0.25, tma=True)


def test_tma_loads_only_where_the_tensors_allow():
    from rrattention.kernels.block_sparse_attention import tma_supported

    k = torch.randn(1, 2, 64, 128, dtype=torch.float16, device=DEVICE)
    assert not tma_supported(torch.randn(1, 2, 64, 128, dtype=torch.float16), k.cpu())  # CPU tensors
    if GPU and torch.cuda.get_device_capability()[0] >= 9:
        assert tma_supported(k, k)
        assert tma_supported(k.transpose(1, 2).contiguous().transpose(1, 2), k)  # a framework's [B, L, H, D] memory
        assert not tma_supported(k.float(), k.float())  # fp32 keeps the pointer loads
        other = torch.randn(1, 2, 64, 32, dtype=torch.float16, device=DEVICE)
        assert not tma_supported(other, other)  # a head dim without a measured gain
        fused = torch.randn(1, 64, 6, 128, dtype=torch.float16, device=DEVICE)[:, :, 2:4].transpose(1, 2)
        assert tma_supported(fused, fused)  # keys inside a fused projection's rows
        shifted = torch.randn(2 * 64 * 128 + 1, dtype=torch.float16, device=DEVICE)[1:].view(1, 2, 64, 128)
        assert not tma_supported(shifted, k)  # a base pointer off the 16-byte grid


def test_dispatch_reports_why_backends_decline():
    problem = backends.Problem(torch.device("cpu"), 96, torch.float16, head_dim=512, stride=8, group=4, varlen=True)
    reasons = backends.explain("attention", problem)
    assert reasons["reference"] == ["no packed variable-length layout"]  # a packed batch is planned per sequence
    assert any("runs on cuda tensors, got cpu" in r for r in reasons["triton"])
    assert any("block_size 96 not in [64, 128]" in r for r in reasons["triton"])
    assert any("head dim 512 outside [16, 256]" in r for r in reasons["triton"])
    assert any("no packed variable-length layout" in r for r in reasons["flex"])
    for why in ("block_size 96 not in [128]", "head dim 512 not in [64, 128]", "runs on cuda tensors, got cpu"):
        assert any(why in r for r in reasons["fa4"]), (why, reasons["fa4"])
    if not backends.base.importable("flash_attn.cute"):
        assert any("needs the package(s) flash_attn.cute, cutlass" in r for r in reasons["fa4"])
    assert backends.explain("estimate", problem)["flex"] == ["does not implement the estimate stage (implements attention)"]
    # the estimator's rows are (query block, head) pairs: a group of any size fits its tile
    big_group = backends.Problem(torch.device("cuda"), 128, torch.bfloat16, head_dim=128, stride=4, group=32)
    assert not backends.get("triton").limits("estimate", big_group)
    assert backends.choose("attention", dataclasses.replace(problem, varlen=False)) is backends.get("reference")
    q, k, v = make_qkv(1, 2, 1, 64, 64, 16)
    if not GPU:
        with pytest.raises(ValueError, match="backend .triton. cannot run the estimate stage: runs on cuda tensors, got cpu"):
            rr.rr_attention(q, k, v, rr.RRConfig(block_size=64, min_sparse_len=0), backend="triton")
    with pytest.raises(ValueError, match="backend must be one of 'fa4', 'triton', 'flex', 'reference', got 'cuda'"):
        rr.rr_attention(q, k, v, backend="cuda")
    _, stats = rr.rr_attention(q, k, v, rr.RRConfig(block_size=64, min_sparse_len=0), return_stats=True, backend="reference")
    assert stats.backends == {"method": "rrattention", "estimate": "reference", "select": "reference", "attention": "reference"}


@pytest.mark.parametrize("batch, hq, hkv, lq, lk, dim, stride, block", [(1, 2, 1, 200, 330, 64, 8, 64), (2, 4, 2, 129, 129, 32, 4, 128)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_xattention_estimator_matches_its_reference(batch, hq, hkv, lq, lk, dim, stride, block, dtype):
    from rrattention.reference import antidiagonal_block_scores

    q, k, _ = make_qkv(batch, hq, hkv, lq, lk, dim, dtype=dtype, device=DEVICE, seed=lk)
    want = antidiagonal_block_scores(q, k, stride=stride, block_size=block)
    got = estimate_kernel(q, k, stride=stride, block_size=block, head_shift="round_robin", scale=dim**-0.5,
                          antidiagonal=True, out=torch.full_like(want, float("nan")), config=_estimate_config())
    assert not bool(got.isnan().any())
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)


def test_fa4_is_declined_where_its_block_sparse_forward_is_wrong_or_unverified():
    from rrattention.backends.fa4 import architecture_reasons

    assert architecture_reasons((9, 0)) == []
    assert "#2897" in architecture_reasons((8, 0))[0] and "silently ignores" in architecture_reasons((8, 6))[0]
    assert "#2727" in architecture_reasons((10, 0))[0] and "256-row" in architecture_reasons((10, 0))[0]
    assert "verified here on SM90 only" in architecture_reasons((12, 0))[0]


@pytest.mark.parametrize("q_len, k_len", [(512, 512), (300, 700), (129, 1000), (64, 64)])
def test_fa4_block_lists_split_a_mask_into_partial_and_full_tiles(q_len, k_len):
    """Against the definition: a selected tile is full iff every query of its row sees every key of it."""
    from rrattention.kernels.block_lists import block_lists

    bk = 128
    g = torch.Generator().manual_seed(q_len + k_len)
    visible = rr.reference.visible_blocks(q_len, k_len, bk, "cpu")
    mask = (torch.rand(2, 3, *visible.shape, generator=g) < 0.6) & visible
    pc, pi, fc, fi = block_lists(mask.to(DEVICE), q_len=q_len, k_len=k_len, block_size=bk)
    delta = k_len - q_len
    for b, h, i in itertools.product(range(2), range(3), range(visible.shape[0])):
        rows = torch.arange(i * bk, min((i + 1) * bk, q_len)) + delta  # key positions the row's queries reach
        full, partial = [], []
        for j in mask[b, h, i].nonzero().flatten().tolist():
            keys = torch.arange(j * bk, (j + 1) * bk)
            (full if bool((keys[None, :] <= rows[:, None]).all()) and (j + 1) * bk <= k_len else partial).append(j)
        assert (int(fc[b, h, i]), int(pc[b, h, i])) == (len(full), len(partial))
        assert fi[b, h, i, : len(full)].tolist() == full and pi[b, h, i, : len(partial)].tolist() == partial


def _fa4_varlen_token_mask(lists, s, h, q_len, k_len, bk):
    """The (query, key) pairs FA4's SM90 forward attends for sequence ``s``, head ``h``, reading the
    varlen lists as flash_attn/cute/block_sparse_utils.py (4.0.0b36) does: row ``i``'s count at
    ``[h, cu_total_m_blocks[s] + i]``, its indices from ``cu_block_idx_offsets[s] + i·ceil(Lk/Bk)``;
    partial tiles get the bottom-right causal and key-length masks, full tiles none."""
    partial_count, partial_index, full_count, full_index, cu_rows, cu_lists = (x.cpu() for x in lists)
    n_kblocks = -(-k_len // bk)
    attended = torch.zeros(q_len, n_kblocks * bk, dtype=torch.bool)
    for i in range(-(-q_len // bk)):
        row, start = int(cu_rows[s]) + i, int(cu_lists[s]) + i * n_kblocks
        queries = torch.arange(i * bk, min((i + 1) * bk, q_len))
        for count, index, masked in ((partial_count, partial_index, True), (full_count, full_index, False)):
            for j in index[h, start : start + int(count[h, row])].tolist():
                keys = torch.arange(j * bk, (j + 1) * bk)
                seen = (keys[None, :] <= queries[:, None] + k_len - q_len) & (keys[None, :] < k_len)
                assert masked or bool(seen.all()), (s, h, i, j)  # a full tile needs no mask
                assert not bool(attended[queries[:, None], keys[None, :]].any()), (s, h, i, j)  # listed once
                attended[queries[:, None], keys[None, :]] = seen if masked else True
        for index, count in ((partial_index, partial_count), (full_index, full_count)):
            listed = index[h, start : start + int(count[h, row])]
            assert bool((listed.diff() > 0).all()) and bool((listed < n_kblocks).all())  # ascending, in the grid
    return attended[:, :k_len]


@pytest.mark.parametrize("q_lens, k_lens", [([300, 128, 1, 513], [700, 128, 90, 513]), ([64, 1000], [64, 1000])])
def test_fa4_varlen_block_lists_imply_the_block_mask_and_causal(q_lens, k_lens):
    """Decoded as FA4 reads them, the packed lists attend exactly block mask AND bottom-right causal."""
    from rrattention.kernels.block_lists import varlen_block_lists

    bk, heads = 128, 2
    g = torch.Generator().manual_seed(sum(k_lens))
    nbq, nbk = -(-max(q_lens) // bk), -(-max(k_lens) // bk)
    mask = torch.zeros(len(q_lens), heads, nbq, nbk, dtype=torch.bool)
    for s, (lq, lk) in enumerate(zip(q_lens, k_lens)):
        visible = rr.reference.visible_blocks(lq, lk, bk, "cpu")
        mask[s, :, : visible.shape[0], : visible.shape[1]] = (torch.rand(heads, *visible.shape, generator=g) < 0.6) & visible
    cu = lambda n: torch.tensor([0, *n]).cumsum(0).to(torch.int32).to(DEVICE)  # noqa: E731
    lists = varlen_block_lists(mask.to(DEVICE), cu(q_lens), cu(k_lens), block_size=bk)
    assert lists[4].tolist() == [0, *itertools.accumulate(-(-lq // bk) for lq in q_lens)]  # FA4's cu_total_m_blocks
    for s, (lq, lk) in enumerate(zip(q_lens, k_lens)):
        tokens = mask[s].repeat_interleave(bk, 1).repeat_interleave(bk, 2)[:, :lq, :lk]
        causal = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + lk - lq
        for h in range(heads):
            assert torch.equal(_fa4_varlen_token_mask(lists, s, h, lq, lk, bk), tokens[h] & causal), (s, h)
    # a mask broadcast over heads (stride 0, as FA4Backend.attend expands a shared one) reads like its copy
    shared = mask[:, :1].expand(-1, heads, -1, -1)
    got, want = (varlen_block_lists(m.to(DEVICE), cu(q_lens), cu(k_lens), block_size=bk)
                 for m in (shared, shared.contiguous()))
    for s, lq in enumerate(q_lens):
        for h in range(heads):
            assert torch.equal(_fa4_varlen_token_mask(got, s, h, lq, k_lens[s], bk),
                               _fa4_varlen_token_mask(want, s, h, lq, k_lens[s], bk))


def test_fa4_takes_packed_batches_under_the_limits_of_padded_ones():
    from rrattention.backends import fa4

    packed = backends.Problem(torch.device("cuda"), 128, torch.bfloat16, head_dim=128, varlen=True)
    padded = dataclasses.replace(packed, varlen=False)
    assert fa4.FA4Backend.preference_reasons("attention", packed) == []
    assert fa4.FA4Backend().limits("attention", packed) == fa4.FA4Backend().limits("attention", padded)
    wide = dataclasses.replace(packed, head_dim=256)
    assert any("head dim 256" in r for r in fa4.FA4Backend().limits("attention", wide))
    # D=64's preference for the Triton kernel holds for packed batches too
    narrow = dataclasses.replace(packed, head_dim=64)
    assert any("head dim 64" in r for r in fa4.FA4Backend.preference_reasons("attention", narrow))


def test_fa4_declines_calls_too_small_to_repay_its_host_cost():
    from rrattention.backends import fa4

    small = backends.Problem(torch.device("cuda"), 128, torch.bfloat16, head_dim=64,
                             dense_flops=backends.causal_flops(1, 9, 16384, 16384, 64))
    large = dataclasses.replace(small, dense_flops=backends.causal_flops(1, 9, 32768, 32768, 64))
    assert any("break-even" in r for r in fa4.FA4Backend().limits("attention", small))
    assert not any("break-even" in r for r in fa4.FA4Backend().limits("attention", large))
    assert backends.causal_flops(2, 3, 10, 30, 8) == 4 * 2 * 3 * 10 * 25 * 8


def test_fa4_leaves_the_sparse_stage_of_head_dim_64_to_the_triton_kernel():
    from rrattention.backends import fa4

    large = backends.causal_flops(1, 9, 65536, 65536, 64)
    d64 = backends.Problem(torch.device("cuda"), 128, torch.bfloat16, head_dim=64, dense_flops=large)
    d128 = dataclasses.replace(d64, head_dim=128)
    assert any("Triton kernel's 64-row tiles measured faster" in r for r in fa4.FA4Backend().limits("attention", d64))
    assert not any("measured faster" in r for r in fa4.FA4Backend().limits(backends.DENSE, d64))  # dense calls keep FA4
    assert not any("measured faster" in r for r in fa4.FA4Backend().limits("attention", d128))
