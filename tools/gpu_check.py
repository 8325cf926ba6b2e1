"""GPU correctness check of the Triton (and FlexAttention) backends against the reference.

    python tools/gpu_check.py --out results/kernels/h100/gpu_check.txt
    compute-sanitizer --tool memcheck python tools/gpu_check.py --small

For each case (ragged lengths 1K–32K, GQA ratios 1/4/7, D 64/128, bf16/fp16, Lq < Lk, varlen,
every head-shift policy and selector) on identical inputs:

* masks: Triton estimator + selection vs the reference (fp32 throughout). A differing block is
  accepted only where the reference's own decision is within floating-point tolerance: the mass
  ranked from it onwards lies within 1e-5·T of (1 − τ)·T, or its score is within 1e-5·T of the
  score at the row's cut (a near tie). Any other difference fails.
* outputs: relative error ‖out − ref‖/‖ref‖ of our block-sparse kernel (FlexAttention, and
  FlashAttention-4 through the ``fa4`` backend where it accepts the call, with its natural-log LSE) against
  an fp32 reference computed on the same mask must be ≤ 2× the error of dense SDPA in the same
  dtype against the fp32 dense reference.
* every output element is written (outputs are poisoned with NaN first).
* the packed (varlen) case: our kernel's output per sequence, and FlashAttention-4's on the same
  selection through its varlen block-sparse lists (``fa4`` backend, ``attend(packed=...)``), error
  ≤ 2× SDPA's, LSE within 1e-2. FA4 is checked wherever it can run a call, also where dispatch passes
  it over (``FA4Backend.preference_reasons``: slower there, or not yet run on a GPU).
* the whole call (``rr_attention``, planned) selects exactly the mask of the stage-by-stage calls.
* one plan run over several layers, as a model's forward pass runs it (the second and later
  launches of each kernel go through the plan's cached launchers): every layer's output and mask
  equal a fresh ``rr_attention`` call's bit for bit, with a misaligned input (a new Triton
  specialisation) in between, padded and packed.
* a random-weight Llama with SmolLM2's attention, four prefill passes through the transformers
  hook with CUDA graphs (copying graphs in the first pass, graphs captured on the layers' own
  tensors in the second and third, only those in the fourth): every pass's logits equal those of
  the hook without CUDA graphs, bit for bit.
* decode (one query, dense by spec §6) in each dtype and GQA ratio: error against fp32 attention
  over every key ≤ 2× dense SDPA's with the KV heads repeated.
* prefill that spec §6 makes dense (``min_sparse_len`` above ``Lk``; padded batch, Lq < Lk, GQA
  3/4/7): the dense stage's backend (FA4 on long calls where installed, else SDPA) against the fp32
  dense reference, error ≤ 2× SDPA's in the same dtype.
Exit status 1 if any case fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention import reference  # noqa: E402
from rrattention.kernels.block_sparse_attention import block_sparse_attention as sparse_kernel  # noqa: E402
from rrattention.kernels.flex_attention import block_sparse_attention as flex_sparse  # noqa: E402

TOL = 1e-5
C = rr.RRConfig
# (name, B, Hq, Hkv, Lq, Lk, D, dtype, cfg); tools/compare_estimator_precision.py uses the same inputs
CASES = [
    ("MHA 1000 D64 bf16", 1, 8, 8, 1000, 1000, 64, torch.bfloat16, C(tau=0.9)),
    ("GQA4 B2 4093 D128 bf16", 2, 16, 4, 4093, 4093, 128, torch.bfloat16, C(tau=0.95)),
    ("GQA7 8191 D128 fp16 forced_first", 1, 28, 4, 8191, 8191, 128, torch.float16, C(tau=0.9, selector="forced_first")),
    ("GQA4 chunked 3000/9001 D64 bf16", 1, 8, 2, 3000, 9001, 64, torch.bfloat16, C(tau=0.9)),
    ("GQA4 5000 Bk64 S4 fp16 random", 1, 4, 1, 5000, 5000, 64, torch.float16, C(stride=4, block_size=64, head_shift="random")),
    ("GQA4 6007 exact_stride group_rr bf16", 1, 8, 2, 6007, 6007, 128, torch.bfloat16,
     C(exact_stride_causal=True, head_shift="group_round_robin", tau=0.8)),
    # SmolLM2's shape (9 query / 3 KV heads, D=64): every head-shift policy compiles and matches
    *((f"GQA3 8192 D64 bf16 {p}", 1, 9, 3, 8192, 8192, 64, torch.bfloat16, C(head_shift=p, tau=0.9, seed=7))
      for p in rr.HEAD_SHIFTS),
    ("GQA4 16384 D128 bf16", 1, 32, 8, 16384, 16384, 128, torch.bfloat16, C()),
    ("GQA4 32768 D128 bf16", 1, 32, 8, 32768, 32768, 128, torch.bfloat16, C(tau=0.9)),
]


def check_inputs(b, hq, hkv, lq, lk, d, dtype, seed):
    """q, k, v of a case: keys with a few strong directions, as in real models, so attention is far from uniform."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, hq, lq, d, device="cuda", generator=g) * 2
    k = torch.randn(b, hkv, lk, d, device="cuda", generator=g) + 3 * torch.randn(1, hkv, 1, d, device="cuda", generator=g)
    v = torch.randn(b, hkv, lk, d, device="cuda", generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref).norm() / ref.norm())


def unexplained_mask_differences(got: torch.Tensor, want: torch.Tensor, scores: torch.Tensor, cfg: rr.RRConfig,
                                 q_len: int, k_len: int) -> tuple[int, int]:
    """(differing blocks, differing blocks the reference's tolerance does not explain)."""
    diff = got != want
    n_diff = int(diff.sum())
    if n_diff == 0:
        return 0, 0
    forced = reference.forced_blocks(q_len, k_len, cfg.block_size, force_sink=cfg.force_sink,
                                     force_diagonal=cfg.force_diagonal, dense_last_query_block=False,
                                     device=scores.device)
    values = scores.masked_fill(forced, 0.0) if cfg.selector == "forced_first" else scores
    total = scores.sum(-1, keepdim=True)
    ranked, order = torch.sort(values, dim=-1, descending=True, stable=True)
    from_here = torch.flip(torch.cumsum(torch.flip(ranked.double(), [-1]), -1), [-1])
    threshold = (1 - cfg.tau) * total.double()
    margin_ranked = (from_here - threshold).abs() <= TOL * total.double()
    margin = torch.zeros_like(margin_ranked).scatter(-1, order, margin_ranked)
    kept = from_here > threshold
    cut_rank = kept.sum(-1, keepdim=True).clamp(max=ranked.shape[-1] - 1)  # first dropped (or last)
    cut_values = torch.cat([ranked.gather(-1, (cut_rank - 1).clamp(min=0)), ranked.gather(-1, cut_rank)], -1)
    near_tie = ((values[..., None] - cut_values[..., None, :]).abs() <= TOL * total[..., None]).any(-1)
    return n_diff, int((diff & ~(margin | near_tie)).sum())


def fa4_cannot(fa4, stage, problem) -> list[str]:
    """Why FA4 cannot run the call at all (dispatch's preferences aside: those calls are checked too)."""
    preferences = fa4.preference_reasons(stage, problem)
    return [reason for reason in fa4.not_supported_reasons(stage, problem) if reason not in preferences]


def check_case(name, q, k, v, cfg, report, flex=True) -> bool:
    q_len, k_len = q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5
    scores_ref = rr.estimate_block_scores(q, k, cfg, backend="reference")
    mask_ref = rr.select_blocks(scores_ref, cfg, q_len=q_len, k_len=k_len, backend="reference")
    scores = rr.estimate_block_scores(q, k, cfg, backend="triton")
    mask = rr.select_blocks(scores, cfg, q_len=q_len, k_len=k_len, backend="triton")
    score_err = float(((scores - scores_ref).abs().amax(-1) / scores_ref.sum(-1).clamp(min=1e-30)).max())
    same_scores_mask = rr.select_blocks(scores_ref, cfg, q_len=q_len, k_len=k_len, backend="triton")
    n_diff, n_bad = unexplained_mask_differences(mask, mask_ref, scores_ref, cfg, q_len, k_len)

    count, index = rr.to_kv_index(mask)
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:3], float("nan"), device=q.device)
    sparse_kernel(q, k, v, count, index, block_size=cfg.block_size, scale=scale, out=out, lse=lse)
    written = not bool(out.isnan().any() or lse.isnan().any())
    q32, k32, v32 = q.float(), k.float(), v.float()
    ref_out, ref_lse = reference.block_sparse_attention(q32, k32, v32, mask, block_size=cfg.block_size, scale=scale)
    visible = reference.visible_blocks(q_len, k_len, cfg.block_size, q.device)[None, None]
    dense_ref, _ = reference.block_sparse_attention(q32, k32, v32, visible, block_size=cfg.block_size, scale=scale)
    err_ours = rel_err(out, ref_out)
    err_lse = float((lse - ref_lse).abs().max())
    err_sdpa = rel_err(reference.dense_causal_attention(q, k, v, scale=scale), dense_ref)
    try:
        err_flex = rel_err(flex_sparse(q, k, v, mask, block_size=cfg.block_size, scale=scale)[0], ref_out) if flex else 0.0
    except Exception as err:  # report and fail the case rather than stop the check
        report(f"  flex failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
        err_flex = float("inf")
    # FlashAttention-4's block-sparse forward on the same mask, where the fa4 backend accepts the call
    fa4 = rr.backends.get("fa4")
    problem = rr.methods.base.problem_of(q, k, cfg)
    # correctness wherever FA4 can run the call; dispatch also weighs its speed (preference_reasons)
    fa4_declined = fa4_cannot(fa4, "attention", problem)
    fa4_chosen = not fa4.not_supported_reasons("attention", problem)
    err_fa4 = err_fa4_lse = 0.0
    if not fa4_declined:
        try:
            fa4_out, fa4_lse = fa4.attend(q, k, v, rr.backends.Selection(mask), block_size=cfg.block_size, scale=scale)
            err_fa4, err_fa4_lse = rel_err(fa4_out, ref_out), float((fa4_lse - ref_lse).abs().max())
        except Exception as err:  # report and fail the case rather than stop the check
            report(f"  fa4 failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
            err_fa4 = err_fa4_lse = float("inf")
    # the whole call, through a plan (sparse at every length: the masks are compared with §4 alone)
    _, stats = rr.rr_attention(q, k, v, dataclasses.replace(cfg, min_sparse_len=0), return_stats=True)
    dispatched = stats.backends.get("attention")
    plan_same = torch.equal(stats.block_mask, mask) and dispatched == ("fa4" if fa4_chosen else "triton")
    ok = (n_bad == 0 and torch.equal(same_scores_mask, mask_ref) and written and err_ours <= 2 * err_sdpa
          and err_flex <= 2 * err_sdpa and err_lse < 1e-2 and plan_same and err_fa4 <= 2 * err_sdpa and err_fa4_lse < 1e-2)
    sparsity = 1 - float(mask.sum()) / float(visible.sum() * q.shape[0] * q.shape[1])
    report(f"{'PASS' if ok else 'FAIL'} {name:<44} sparsity {sparsity:5.3f}  score err/T {score_err:.1e}  "
           f"mask diff {n_diff:>3} (unexplained {n_bad})  select(ref scores) {'=' if torch.equal(same_scores_mask, mask_ref) else '≠'}  "
           f"out err ours {err_ours:.2e} flex {err_flex:.2e} sdpa {err_sdpa:.2e}  lse {err_lse:.1e}  written {written}  "
           f"rr_attention mask {'=' if plan_same else '≠'} (attention by {dispatched})  "
           + (f"fa4 err {err_fa4:.2e} lse {err_fa4_lse:.1e}" if not fa4_declined else f"fa4 declined: {fa4_declined[0][:60]}"))
    return ok


def check_varlen(name, q_lens, k_lens, hq, hkv, d, dtype, cfg, report) -> bool:
    g = torch.Generator(device="cuda").manual_seed(sum(k_lens))
    seqs = [tuple(torch.randn(1, h, n, d, device="cuda", generator=g, dtype=dtype) for h, n in ((hq, lq), (hkv, lk), (hkv, lk)))
            for lq, lk in zip(q_lens, k_lens)]
    pack = lambda xs: torch.cat([x[0].transpose(0, 1) for x in xs])  # noqa: E731
    cu = lambda n: torch.tensor([0, *n], device="cuda").cumsum(0).to(torch.int32)  # noqa: E731
    q, k, v = (pack([s[i] for s in seqs]) for i in range(3))
    out, stats = rr.rr_attention_varlen(q, k, v, cu(q_lens), cu(k_lens), max(q_lens), max(k_lens), cfg,
                                        return_stats=True, backend="triton")
    # FA4's varlen block-sparse lists on the same selection, called directly: D=64 too, where dispatch
    # prefers the Triton kernel
    fa4 = rr.backends.get("fa4")
    fa4_declined = fa4_cannot(fa4, "attention", rr.methods.base.problem_of(q, k, cfg, varlen=True))
    fa4_out = fa4_lse = None
    if not fa4_declined:
        try:
            fa4_out, fa4_lse = fa4.attend(q, k, v, rr.backends.Selection(stats.block_mask), block_size=cfg.block_size,
                                          scale=d**-0.5, packed=rr.backends.Packed(cu(q_lens), cu(k_lens), max(q_lens),
                                                                                   max(k_lens)))
        except Exception as err:  # report and fail the case rather than stop the check
            report(f"  fa4 varlen failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
            fa4_declined = ["failed"]
    ok, worst, n_diff, n_bad = fa4_declined != ["failed"], 0.0, 0, 0
    fa4_ratios, fa4_lse_errs = [], []
    offset = 0
    for s, ((qs, ks, vs), lq, lk) in enumerate(zip(seqs, q_lens, k_lens)):
        scores_ref = rr.estimate_block_scores(qs, ks, cfg, backend="reference")
        mask_ref = rr.select_blocks(scores_ref, cfg, q_len=lq, k_len=lk, backend="reference")
        rows, cols = mask_ref.shape[-2:]
        mask = stats.block_mask[s : s + 1, :, :rows, :cols]
        d_, b_ = unexplained_mask_differences(mask, mask_ref, scores_ref, cfg, lq, lk)
        n_diff, n_bad = n_diff + d_, n_bad + b_
        ref_out, ref_lse = reference.block_sparse_attention(qs.float(), ks.float(), vs.float(), mask, block_size=cfg.block_size, scale=d**-0.5)
        visible = reference.visible_blocks(lq, lk, cfg.block_size, "cuda")[None, None]
        dense_ref, _ = reference.block_sparse_attention(qs.float(), ks.float(), vs.float(), visible, block_size=cfg.block_size, scale=d**-0.5)
        err = rel_err(out[offset : offset + lq].transpose(0, 1)[None], ref_out)
        # a one-token sequence's output is its value row, which SDPA returns exactly: there SDPA's
        # error counts as the output's rounding to its dtype, half an ulp
        err_sdpa = (rel_err(reference.dense_causal_attention(qs, ks, vs, scale=d**-0.5), dense_ref)
                    or torch.finfo(dtype).eps / 2)
        worst = max(worst, err / err_sdpa)
        ok &= err <= 2 * err_sdpa
        if fa4_out is not None:
            fa4_ratios.append(rel_err(fa4_out[offset : offset + lq].transpose(0, 1)[None], ref_out) / err_sdpa)
            fa4_lse_errs.append(float((fa4_lse[:, offset : offset + lq] - ref_lse[0]).abs().max()))
        offset += lq
    # NaN fails both comparisons
    ok &= n_bad == 0 and all(r <= 2 for r in fa4_ratios) and all(e < 1e-2 for e in fa4_lse_errs)
    fa4_text = (f"fa4 varlen worst out err / sdpa err {max(fa4_ratios):.2f} lse {max(fa4_lse_errs):.1e}"
                if fa4_out is not None else f"fa4 varlen declined: {fa4_declined[0][:60]}")
    report(f"{'PASS' if ok else 'FAIL'} {name:<44} mask diff {n_diff} (unexplained {n_bad})  "
           f"worst out err / sdpa err {worst:.2f}  sparsity {stats.sparsity:.3f}  {fa4_text}")
    return ok


def misaligned(x: torch.Tensor) -> torch.Tensor:
    """``x``'s values in memory that starts one element past a 16-byte boundary."""
    flat = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)[1:]
    return flat.view(x.shape).copy_(x)


def check_plan_layers(name, hq, hkv, length, d, dtype, report, cuda_graphs=False) -> bool:
    """Layers run through one plan (cached launches; with ``cuda_graphs``, replayed CUDA graphs)
    equal independent calls, bit for bit. Layer 3's inputs are misaligned (a graphed plan copies
    them into its aligned buffers and replays), layer 5 has its own τ (its own graph key: its one
    call runs eagerly). With ``cuda_graphs``, layer 4's call then comes back six times with the same
    tensors and ``keep_selection=False``: it is captured on them and replayed with no copies."""
    cfg = rr.RRConfig(tau=0.9, min_sparse_len=0, layer_overrides={5: {"tau": 0.8}})
    g = torch.Generator(device="cuda").manual_seed(length + hq)
    plan = rr.AttentionPlan(cfg, q_heads=hq, kv_heads=hkv, head_dim=d, dtype=dtype, device=torch.device("cuda"),
                            scale=d**-0.5, batch=1, q_len=length, k_len=length, cuda_graphs=cuda_graphs)
    lens = [length // 3, length - length // 3]
    cu = torch.tensor([0, lens[0], length], dtype=torch.int32, device="cuda")
    packed_plan = rr.AttentionPlan(cfg, q_heads=hq, kv_heads=hkv, head_dim=d, dtype=dtype, device=torch.device("cuda"),
                                   scale=d**-0.5, packed=rr.backends.Packed(cu, cu, max(lens), max(lens)),
                                   cuda_graphs=cuda_graphs)
    ok, layers, equal = True, 0, True
    for layer in range(6):
        q = torch.randn(1, hq, length, d, device="cuda", generator=g).to(dtype) * 2
        k = (torch.randn(1, hkv, length, d, device="cuda", generator=g) + 3 * torch.randn(1, hkv, 1, d, device="cuda", generator=g)).to(dtype)
        v = torch.randn(1, hkv, length, d, device="cuda", generator=g).to(dtype)
        if layer == 3:
            q, k = misaligned(q), misaligned(k)
        run = plan.run(q, k, v, layer)
        want, stats = rr.rr_attention(q, k, v, cfg, layer=layer, return_stats=True)
        equal &= torch.equal(run.out, want) and torch.equal(plan.stats(run).block_mask, stats.block_mask)
        if layer == 4:
            own_call = (q, k, v, want)
        tq, tk, tv = (x[0].transpose(0, 1) for x in (q, k, v))  # [T, H, D] views: strided, as models pass them
        got = packed_plan.run(tq, tk, tv, layer).out
        want_packed = rr.rr_attention_varlen(tq, tk, tv, cu, cu, max(lens), max(lens), cfg, layer=layer)
        equal &= torch.equal(got, want_packed)
        layers += 1
    ok &= equal
    cached = sum(len(b.launches) for b in plan._bound.values() if getattr(b, "launches", None) is not None)
    ok &= cached > 0
    graphed = ""
    if cuda_graphs:
        # layers 0 to 4 share a key: eager, captured (and replayed), then replayed
        replays = [p.graphs.replays for p in (plan, packed_plan)]
        declined = [reason for p in (plan, packed_plan) for reason in p.graphs.declined.values()]
        ok &= replays == [4, 4] and [len(plan.graphs), len(packed_plan.graphs)] == [1, 1] and not declined
        # with out given (its own layout): eager, captured, copied in (seen), captured on the call's
        # own tensors, then replayed twice with no copies
        q, k, v, want = own_call
        out = torch.empty_like(q)
        own = [torch.equal(plan.run(q, k, v, 4, out=out, keep_selection=False).out, want) for _ in range(6)]
        ok &= all(own) and plan.graphs.direct == 1 and plan.graphs.replays == 9 and not plan.graphs.declined
        graphed = (f"; graph replays (padded, packed) {replays}, declined {declined or 'none'}; "
                   f"the same tensors again: {plan.graphs.direct} graph on them, bit for bit {all(own)}")
    report(f"{'PASS' if ok else 'FAIL'} {name:<44} {layers} layers through one plan (padded and packed) = "
           f"independent calls, bit for bit: {equal}; cached launchers {cached}{graphed}")
    return ok


def check_hook_passes(name, length, report) -> bool:
    """Prefill passes of a random-weight model with SmolLM2's attention (9/3 heads, D=64) and a narrow
    rest through the transformers hook: with CUDA graphs equal to without, bit for bit, pass by pass."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=1024, hidden_size=576, intermediate_size=64, num_hidden_layers=6,
                                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=length)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
    ids = torch.randint(0, 1024, (1, length), device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    cfg = rr.RRConfig(min_sparse_len=0)
    logits = {}
    with torch.no_grad():
        for graphs in (False, True):
            rr.hf.configure(model, cfg, cuda_graphs=graphs)
            logits[graphs] = [model(ids, use_cache=False, logits_to_keep=64).logits for _ in range(4)]
    plan = next(iter(rr.hf.attention_modules(model)[0].rrattention_state.plans._entries.values()))[2]
    equal = [torch.equal(a, b) for a, b in zip(logits[False], logits[True])]
    ok = all(equal) and plan.graphs.replays > 0 and not plan.graphs.declined
    report(f"{'PASS' if ok else 'FAIL'} {name:<44} 4 passes, logits with CUDA graphs = without, bit for bit: {equal}; "
           f"graph replays {plan.graphs.replays}, graphs on the layers' own tensors {plan.graphs.direct} "
           f"of {config.num_hidden_layers} layers")
    return ok


def check_decode(name, b, hq, hkv, lk, d, dtype, report) -> bool:
    g = torch.Generator(device="cuda").manual_seed(lk + hq)
    q = torch.randn(b, hq, 1, d, device="cuda", generator=g).to(dtype)
    k, v = (torch.randn(b, hkv, lk, d, device="cuda", generator=g).to(dtype) for _ in range(2))
    group, scale = hq // hkv, d ** -0.5
    kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    want = torch.softmax((q.float() @ kr.float().transpose(-1, -2)) * scale, -1) @ vr.float()
    out, stats = rr.rr_attention(q, k, v, rr.RRConfig(min_sparse_len=0), return_stats=True)
    ours, sdpa = rel_err(out, want), rel_err(torch.nn.functional.scaled_dot_product_attention(q, kr, vr), want)
    ok = ours <= 2 * sdpa + 1e-6 and stats.is_dense and out.dtype == dtype
    report(f"{'PASS' if ok else 'FAIL'} {name:<46}dense {stats.is_dense}  out err ours {ours:.2e} sdpa {sdpa:.2e}")
    return ok


def check_dense(name, b, hq, hkv, lq, lk, d, dtype, report) -> bool:
    """A call spec §6 makes dense (``min_sparse_len`` above ``Lk``): the dense stage's backend (FA4 on
    long calls where installed, SDPA otherwise) against the fp32 dense reference."""
    q, k, v = check_inputs(b, hq, hkv, lq, lk, d, dtype, seed=lq * 7 + hq)
    want = reference.dense_causal_attention(q.float(), k.float(), v.float(), scale=d**-0.5)
    out, stats = rr.rr_attention(q, k, v, rr.RRConfig(min_sparse_len=2 * lk), return_stats=True)
    ours = rel_err(out, want)
    sdpa = rel_err(reference.dense_causal_attention(q, k, v, scale=d**-0.5), want)
    ok = ours <= 2 * sdpa + 1e-6 and stats.is_dense and out.dtype == dtype and out.shape == q.shape
    report(f"{'PASS' if ok else 'FAIL'} {name:<46}dense {stats.is_dense}  out err ours {ours:.2e} sdpa {sdpa:.2e}  "
           f"(attention by {stats.backends['attention']})")
    return ok


def main() -> int:
    # FlexAttention recompiles per shape; past dynamo's default limit (8) it runs unfused and runs out of memory
    torch._dynamo.config.recompile_limit = 64
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="small sizes only (for compute-sanitizer)")
    ap.add_argument("--skip-flex", action="store_true", help="do not check the FlexAttention backend")
    ap.add_argument("--only", default="", help="run only the cases whose name contains one of these comma-separated texts")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("")

    def report(line):  # written as it goes: a run cut short keeps what it checked
        print(line, flush=True)
        if args.out is not None:
            with open(args.out, "a") as fh:
                fh.write(line + "\n")

    props = torch.cuda.get_device_properties(0)
    report(f"gpu_check on {props.name}; torch {torch.__version__}; triton {triton.__version__}; {datetime.date.today()}; "
           f"command: python tools/gpu_check.py {' '.join(sys.argv[1:])}")
    cases = CASES
    if args.small:
        cases = [
            ("small GQA4 700 D64 bf16", 1, 4, 1, 700, 700, 64, torch.bfloat16, C(block_size=64, tau=0.9)),
            ("small chunked 300/650 D128 fp16", 2, 4, 2, 300, 650, 128, torch.float16, C(tau=0.8)),
            # 66 key blocks: the selection's narrow tiles (16 to 128 columns)
            ("small narrow-tile rows 4200 D64 fp16", 1, 2, 1, 4200, 4200, 64, torch.float16, C(block_size=64, tau=0.9)),
        ]
    ok = True
    wanted = lambda name: not args.only or any(part in name for part in args.only.split(","))  # noqa: E731
    cases = [c for c in cases if wanted(c[0])]
    for name, b, hq, hkv, lq, lk, d, dtype, cfg in cases:
        q, k, v = check_inputs(b, hq, hkv, lq, lk, d, dtype, seed=lq * 31 + hq)
        ok &= check_case(name, q, k, v, cfg, report, flex=not args.skip_flex)
    for name, b, hq, hkv, lk, d, dtype in [("decode GQA3 B2 8192 D64 bf16", 2, 9, 3, 8192, 64, torch.bfloat16),
                                           ("decode MHA 5000 D128 fp16", 1, 8, 8, 5000, 128, torch.float16),
                                           ("decode GQA7 32768 D128 bf16", 1, 28, 4, 32768, 128, torch.bfloat16)][: 1 if args.small else None]:
        if wanted(name):
            ok &= check_decode(name, b, hq, hkv, lk, d, dtype, report)
    for name, *shape in [("dense GQA4 B2 32768 D128 bf16", 2, 32, 8, 32768, 32768, 128, torch.bfloat16),
                         ("dense chunked GQA3 32768/65536 D64 fp16", 1, 9, 3, 32768, 65536, 64, torch.float16),
                         ("dense GQA7 4096 D128 bf16", 1, 28, 4, 4096, 4096, 128, torch.bfloat16)][-1 if args.small else 0:]:
        if wanted(name):
            ok &= check_dense(name, *shape, report)
    for name, hq, hkv, length, small, d, dtype in [("plan layers GQA3 8192 D64 bf16", 9, 3, 8192, 2048, 64, torch.bfloat16),
                                                   ("plan layers GQA4 6000 D128 fp16", 32, 8, 6000, 1000, 128, torch.float16)]:
        for graphs in (False, True):
            label = f"{'graphed ' if graphs else ''}{name}"
            if wanted(label):
                ok &= check_plan_layers(label, hq, hkv, small if args.small else length, d, dtype, report, graphs)
    name = "hook passes GQA3 D64 bf16"
    if wanted(name):
        ok &= check_hook_passes(name, 1024 if args.small else 4096, report)
    lens = ([100, 300, 65], [100, 500, 65]) if args.small else ([1000, 4093, 129, 2500], [1000, 4093, 129, 7000])
    if wanted("varlen"):
        # min_sparse_len=0: the masks are compared with plain §4 selection, without the dense policy of §6
        ok &= check_varlen(f"varlen {lens[0]}/{lens[1]} GQA4 bf16", *lens, 8, 2, 128, torch.bfloat16,
                           C(tau=0.9, min_sparse_len=0), report)
    # a one-token sequence, queries fewer than keys, FA4's other head dim, fp16
    lens = ([1, 130, 300], [1, 210, 300]) if args.small else ([1, 1300, 3000], [1, 2100, 3000])
    if wanted("varlen"):
        ok &= check_varlen(f"varlen {lens[0]}/{lens[1]} GQA3 D64 fp16", *lens, 6, 2, 64, torch.float16,
                           C(tau=0.9, min_sparse_len=0), report)
    report("ALL PASS" if ok else "SOME CASES FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
