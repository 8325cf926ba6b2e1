"""Kernel benchmark: dense SDPA (flash, cuDNN), FlexAttention, our block-sparse kernel and (when
``flash-attn-4`` is installed and accepts the GPU) FlashAttention-4 dense and block-sparse through
the ``fa4`` backend at fixed densities, our estimator + selection, and the estimators of the baseline
methods, side by side.

    python tools/bench_kernels.py --out results/kernels/h100

Writes ``bench_kernels.csv``, ``bench_kernels.md`` (table with provenance) and ``bench_kernels.png``
into ``--out``. Times are medians of ``triton.testing.do_bench`` (CUDA events, after warm-up).
Density ``d`` counts selected / causally visible blocks; masks are random per head and query
block, always holding the sink and diagonal blocks, and identical for FlexAttention and ours.
``--masks structured`` times one mask per length instead: what the estimator and selection
(default ``RRConfig``) choose on ``tools/structured_inputs.py`` (local, sink-heavy and diffuse
heads). ``--layout tokens`` keeps q, k, v in a framework's ``[B, L, H, D]`` memory.
``--variants`` times launch-config variants of our kernel on the same masks, and
``--compare-attention`` another version of the kernel; for both, the largest difference of their
outputs from the default kernel's is recorded. ``--packed N`` times the attention stage alone on a
packed (varlen) batch instead: each length split into N ragged sequences, our kernel against FA4's
varlen block-sparse lists on the same random masks (``bench_packed.csv``, ``bench_packed.md``).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import json
import platform
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention import methods  # noqa: E402
from rrattention.kernels._common import cdiv  # noqa: E402
from rrattention.kernels.block_sparse_attention import block_sparse_attention as sparse_kernel  # noqa: E402
from rrattention.kernels.estimate import estimate_block_scores  # noqa: E402
from rrattention.kernels.flex_attention import block_sparse_attention as flex_sparse  # noqa: E402
from rrattention.kernels.select import select_blocks  # noqa: E402
from rrattention.reference import visible_blocks  # noqa: E402
from structured_inputs import structured_qkv  # noqa: E402


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def peak_extra_mib(fn) -> float:
    """Peak memory one call of ``fn`` allocates, its result included, measured outside do_bench
    (whose L2-flush buffer would count as ours)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    del result
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def random_mask(heads: int, length: int, block: int, density: float, seed: int) -> torch.Tensor:
    """Per (head, row): the sink, the diagonal and a random share of the other visible blocks."""
    visible = visible_blocks(length, length, block, "cuda")
    g = torch.Generator(device="cuda").manual_seed(seed)
    n = visible.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device="cuda")
    forced = eye.clone()
    forced[:, 0] = True
    free = (visible & ~forced).expand(heads, -1, -1)
    rows_visible = visible.sum(-1, keepdim=True).float()
    rows_forced = forced.sum(-1, keepdim=True).float()
    # keep each free block with the probability that makes the row's expected density d
    p = ((density * rows_visible - rows_forced) / (rows_visible - rows_forced).clamp(min=1)).clamp(0, 1)
    keep = torch.rand(free.shape, generator=g, device="cuda") < p
    return ((free & keep) | forced)[None]


def make_qkv(hq: int, hkv: int, length: int, d: int, layout: str, structured: bool = False) -> tuple:
    """bf16 ``q [1, Hq, L, D]``, ``k, v [1, Hkv, L, D]``: Gaussian or ``structured_qkv``'s, in
    ``[B, H, L, D]`` memory or (``layout="tokens"``) a framework's ``[B, L, H, D]``."""
    if structured:
        q, k, v = structured_qkv(1, hq, hkv, length, d, torch.bfloat16, "cuda", seed=length)
    else:
        q, k, v = (torch.randn(1, h, length, d, device="cuda", dtype=torch.bfloat16) for h in (hq, hkv, hkv))
    if layout == "tokens":
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    return q, k, v


def packed_lengths(total: int, n: int, block: int) -> list[int]:
    """``total`` tokens as ``n`` ragged sequences: halving shares (1/2, 1/4, ...; the last takes the
    rest), each off a block boundary by a few tokens so that partial blocks occur."""
    lengths = [max(1, total >> (i + 1)) - (i * 37) % block for i in range(n - 1)]
    return [*lengths, total - sum(lengths)]


def bench_packed(args) -> None:
    """The attention stage on packed batches: Triton against FA4's varlen lists, per computed block
    against cuDNN dense over the same sequences one by one."""
    import pandas as pd
    from gpu_check import fa4_cannot

    hq, hkv, d, block = args.q_heads, args.kv_heads, args.head_dim, args.block
    scale = d**-0.5
    triton_backend, fa4 = rr.backends.get("triton"), rr.backends.get("fa4")
    records = []
    for total in [int(x) for x in args.lengths.split(",")]:
        lens = packed_lengths(total, args.packed, block)
        cu = torch.tensor([0, *lens], device="cuda").cumsum(0).to(torch.int32)
        q = torch.randn(total, hq, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        packed = rr.backends.Packed(cu, cu, max(lens), max(lens))
        spans = packed.host_spans()
        cudnn = 0.0
        for start, end, _, _ in spans:
            qs, ks, vs = (x[start:end].transpose(0, 1)[None] for x in (q, k, v))
            ks, vs = ks.repeat_interleave(hq // hkv, 1), vs.repeat_interleave(hq // hkv, 1)
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                cudnn += bench(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True))
        nb = cdiv(max(lens), block)
        row = {"L": total, "lengths": "/".join(map(str, lens)), "sdpa_cudnn_sum_ms": cudnn}
        # timed wherever FA4 can run the call, also where dispatch passes it over (its preferences)
        fa4_ok = not fa4_cannot(fa4, "attention", rr.methods.base.problem_of(q, k, rr.RRConfig(block_size=block),
                                                                           varlen=True))
        for density in (float(x) for x in args.densities.split(",")):
            mask = torch.zeros(len(lens), hq, nb, nb, dtype=torch.bool, device="cuda")
            visible = 0
            for s, n in enumerate(lens):
                m = random_mask(hq, n, block, density, seed=total + s)[0]
                mask[s, :, : m.shape[-2], : m.shape[-1]] = m
                visible += int(visible_blocks(n, n, block, "cuda").sum()) * hq
            actual = float(mask.sum()) / visible
            # the select stage hands the Triton kernel its compact lists; FA4 builds its own in attend
            selection = rr.backends.Selection(mask, *rr.reference.to_kv_index(mask))
            label = f"d{density:g}"
            row[f"{label}_density"] = actual
            kernels = {"ours": lambda: triton_backend.attend(q, k, v, selection, block_size=block, scale=scale,
                                                             packed=packed)}
            if fa4_ok:
                kernels["fa4"] = lambda: fa4.attend(q, k, v, selection, block_size=block, scale=scale, packed=packed)
            outs = {name: fn()[0] for name, fn in kernels.items()}
            for name, fn in kernels.items():
                t = bench(fn)
                row[f"{name}_{label}_ms"] = t
                row[f"{name}_{label}_vs_cudnn"] = cudnn * actual / t
            if fa4_ok:
                row[f"fa4_{label}_max_abs_diff"] = float((outs["fa4"].float() - outs["ours"].float()).abs().max())
        records.append(row)
        print(row, flush=True)
        torch.cuda.empty_cache()
    df = pd.DataFrame(records)
    props = torch.cuda.get_device_properties(0)
    provenance = (f"GPU: {props.name}; torch {torch.__version__}; triton {triton.__version__}; "
                  f"date {datetime.date.today()}; command: python {' '.join(map(shlex.quote, sys.argv))}; "
                  f"packed batches of {args.packed} sequences, Hq={hq}, Hkv={hkv}, D={d}, bf16, causal, block {block}, "
                  "random masks; cuDNN: dense over each sequence, times summed")
    print(df.to_string(index=False))
    print(provenance)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out / "bench_packed.csv", index=False)
        (args.out / "bench_packed.md").write_text(f"# Packed attention benchmark\n\n{provenance}\n\n"
                                                  + df.to_markdown(index=False, floatfmt=".3f") + "\n")


def sweep(length, hq, hkv, d, block, stride, kernels, layout, precision="exact", tma=None) -> None:
    """Launch-config variants of ``kernels`` at one length, printed fastest first with the default
    config's time (to choose kernels/_common.py); the estimator's in ``precision``, with its means
    through descriptors or not (``tma``; None: as dispatch decides)."""
    import itertools

    q, k, v = make_qkv(hq, hkv, length, d, layout)
    mask = random_mask(hq, length, block, 0.5, seed=0)
    count, index = rr.to_kv_index(mask)
    results = []
    attention_configs = itertools.product([64, 128], [64, 128], [4, 8], [2, 3, 4]) if "attention" in kernels else []
    for bm, bn, warps, stages in attention_configs:
        cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
        try:
            t = bench(lambda: sparse_kernel(q, k, v, count, index, block_size=block, scale=d**-0.5, config=cfg))
        except Exception as err:  # out of shared memory / registers for this variant
            t = float("nan")
            print("attention", cfg, type(err).__name__)
        results.append(("attention", cfg, t))
    estimate_configs = itertools.product([64, 128, 256], [64, 128], [4, 8], [1, 2], [1, 2]) if "estimate" in kernels else []
    for rows, bn, warps, stages, per_sm in estimate_configs:
        cfg = dict(ROWS=rows, BLOCK_N=bn, num_warps=warps, num_stages=stages, PROGRAMS_PER_SM=per_sm)
        try:
            t = bench(lambda: estimate_block_scores(q, k, stride=stride, block_size=block, head_shift="round_robin",
                                                    scale=d**-0.5, config=cfg, precision=precision, tma=tma))
        except Exception as err:
            t = float("nan")
            print("estimate", cfg, type(err).__name__)
        results.append(("estimate", cfg, t))
    defaults = {"attention": lambda: sparse_kernel(q, k, v, count, index, block_size=block, scale=d**-0.5),
                "estimate": lambda: estimate_block_scores(q, k, stride=stride, block_size=block,
                                                          head_shift="round_robin", scale=d**-0.5,
                                                          precision=precision, tma=tma)}
    for kernel in kernels:
        rows = sorted((r for r in results if r[0] == kernel and r[2] == r[2]), key=lambda r: r[2])
        mode = f" ({precision}, means tma={tma})" if kernel == "estimate" else ""
        print(f"{kernel}{mode} at L={length}, Hq={hq}, Hkv={hkv}, D={d}, {layout} layout: default config "
              f"{bench(defaults[kernel]):.3f} ms; "
              "fastest first:")
        for _, cfg, t in rows[:8]:
            print(f"  {t:8.3f} ms  {cfg}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="2048,4096,8192,16384,32768,65536,131072")
    ap.add_argument("--densities", default="1,0.5,0.25,0.1")
    ap.add_argument("--q-heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--sweep", type=int, default=0, metavar="L",
                    help="only time launch-config variants of both kernels at length L and exit")
    ap.add_argument("--select", type=int, default=0, metavar="L",
                    help="only time the estimator (exact, fast, and XAttention's antidiagonal mode) and the "
                         "selection at length L and exit")
    ap.add_argument("--compare-select", default="", metavar="MODULE",
                    help="with --select: also time MODULE's select_blocks (another version of the selection kernel) "
                         "on the same scores, and check that its outputs are identical")
    ap.add_argument("--compare-estimate", default="", metavar="MODULE",
                    help="with --select: also time MODULE's estimate_block_scores (another version of the estimator "
                         "kernel) on the same inputs, and check that its scores are identical, or differ by rounding only")
    ap.add_argument("--sweep-kernels", default="attention,estimate", help="with --sweep: the kernels to sweep")
    ap.add_argument("--sweep-precision", choices=("exact", "fast"), default="exact",
                    help="with --sweep: the estimator's precision mode")
    ap.add_argument("--sweep-tma", choices=("auto", "on", "off"), default="auto",
                    help="with --sweep: the estimator's means through tensor descriptors (auto: as dispatch decides)")
    ap.add_argument("--masks", choices=("random", "structured"), default="random")
    ap.add_argument("--layout", choices=("heads", "tokens"), default="heads",
                    help="memory of q, k, v: [B, H, L, D] (heads) or a framework's [B, L, H, D] (tokens)")
    ap.add_argument("--variants", type=json.loads, default={}, metavar="JSON",
                    help='name -> launch config of our attention kernel, e.g. \'{"pointers": {"tma": false}, '
                         '"heads_first": {"HEADS_FIRST": true}}\' ("tma" is the kernel\'s argument, the rest its config)')
    ap.add_argument("--compare-attention", default="", metavar="MODULE",
                    help="also time MODULE's block_sparse_attention (another version of the kernel) on the same masks")
    ap.add_argument("--packed", type=int, default=0, metavar="N",
                    help="only time the attention stage on packed batches of N ragged sequences (ours and FA4) and exit")
    args = ap.parse_args()
    import pandas as pd

    if args.packed:
        bench_packed(args)
        return
    if args.select:
        q = torch.randn(1, args.q_heads, args.select, args.head_dim, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, args.kv_heads, args.select, args.head_dim, device="cuda", dtype=torch.bfloat16)
        common = dict(stride=args.stride, block_size=args.block, head_shift="round_robin", scale=args.head_dim**-0.5)
        scores = estimate_block_scores(q, k, **common)
        select_args = dict(q_len=args.select, k_len=args.select, block_size=args.block, tau=0.95,
                           selector="top_tau", force_sink=True, force_diagonal=True, dense_last_query_block=True)
        select_cfg = rr.RRConfig(stride=args.stride, block_size=args.block, tau=0.95)  # select_args as a config
        modes = {"exact": dict(precision="exact"), "fast": dict(precision="fast"),
                 "antidiagonal": dict(antidiagonal=True)}  # the last: XAttention's stride scores
        times = {f"estimate_{mode}_ms": bench(lambda: estimate_block_scores(q, k, **kwargs, **common))
                 for mode, kwargs in modes.items()}
        times["select_ms"] = bench(lambda: select_blocks(scores, **select_args))
        if args.compare_estimate:
            other_estimate = importlib.import_module(args.compare_estimate).estimate_block_scores
            name = args.compare_estimate.rsplit('.', 1)[-1]
            for mode, kwargs in modes.items():
                times[f"estimate_{mode}_{name}_ms"] = bench(lambda: other_estimate(q, k, **kwargs, **common))
                theirs = other_estimate(q, k, **kwargs, **common)
                ours = estimate_block_scores(q, k, **kwargs, **common)
                same = torch.equal(ours, theirs)
                print(f"estimator ({mode}) scores identical to {args.compare_estimate}: {same}")
                if not same:
                    # A reordered summation: the scores may differ by rounding, and the masks only
                    # where the other version's scores sit within the reference's tolerance of a cut.
                    from gpu_check import unexplained_mask_differences

                    error = float(((ours - theirs).abs().amax(-1) / theirs.sum(-1).clamp(min=1e-30)).max())
                    want = select_blocks(theirs, **select_args)[0]
                    n_diff, unexplained = unexplained_mask_differences(
                        select_blocks(ours, **select_args)[0], want, theirs, select_cfg, args.select, args.select)
                    print(f"  largest score difference {error:.2e} of a row's mass; masks differ in {n_diff} of "
                          f"{want.numel()} blocks, {unexplained} not explained by the reference's fp tolerance")
                    if error > 1e-5 or unexplained:
                        raise SystemExit(1)
        if args.compare_select:
            other = importlib.import_module(args.compare_select).select_blocks
            ours, theirs = select_blocks(scores, **select_args), other(scores, **select_args)
            times[f"select_{args.compare_select.rsplit('.', 1)[-1]}_ms"] = bench(lambda: other(scores, **select_args))
            identical = all(torch.equal(a, b) for a, b in zip(ours, theirs))
            print(f"selection outputs identical to {args.compare_select}: {identical}")
            if not identical:
                # Both against the reference: differences that its fp tolerance explains are summation order.
                from gpu_check import unexplained_mask_differences

                want = rr.select_blocks(scores, select_cfg, q_len=args.select, k_len=args.select, backend="reference")
                for label, got in (("this", ours), (args.compare_select, theirs)):
                    n_diff, unexplained = unexplained_mask_differences(got[0], want, scores, select_cfg, args.select,
                                                                       args.select)
                    counts = rr.to_kv_index(got[0])
                    print(f"{label} vs the reference: {n_diff} differing blocks of {want.numel()} "
                          f"({unexplained} not explained by fp tolerance); compact form consistent with its mask: "
                          f"{torch.equal(counts[0], got[1]) and torch.equal(counts[1], got[2])}")
                    if unexplained:
                        raise SystemExit(1)
        for mode, kwargs in modes.items():
            times[f"estimate_{mode}_extra_MiB"] = peak_extra_mib(lambda: estimate_block_scores(q, k, **kwargs, **common))
        times["scores_MiB"] = scores.numel() * 4 / 2**20
        props = torch.cuda.get_device_properties(0)
        print(f"{props.name}; torch {torch.__version__}; triton {triton.__version__}; {datetime.date.today()}; "
              f"B=1, Hq={args.q_heads}, Hkv={args.kv_heads}, D={args.head_dim}, L={args.select}: "
              + ", ".join(f"{name} {ms:.3f}" for name, ms in times.items()))
        return
    if args.sweep:
        sweep(args.sweep, args.q_heads, args.kv_heads, args.head_dim, args.block, args.stride,
              args.sweep_kernels.split(","), args.layout, args.sweep_precision,
              {"auto": None, "on": True, "off": False}[args.sweep_tma])
        return

    torch.manual_seed(0)
    hq, hkv, d, block, stride = args.q_heads, args.kv_heads, args.head_dim, args.block, args.stride
    scale = d**-0.5
    densities = [float(x) for x in args.densities.split(",")]
    records = []
    other_attention = (importlib.import_module(args.compare_attention).block_sparse_attention
                       if args.compare_attention else None)
    for length in [int(x) for x in args.lengths.split(",")]:
        q, k, v = make_qkv(hq, hkv, length, d, args.layout, structured=args.masks == "structured")
        kr, vr = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
        row = {"L": length}
        for name, backend in (("sdpa_flash_ms", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn_ms", SDPBackend.CUDNN_ATTENTION)):
            with sdpa_kernel(backend):
                row[name] = bench(lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True))
        cudnn = row["sdpa_cudnn_ms"]
        fa4 = rr.backends.get("fa4")
        fa4_ok = not fa4.not_supported_reasons("attention", rr.methods.base.problem_of(q, k, rr.RRConfig(block_size=block)))
        if fa4_ok:
            from flash_attn.cute import flash_attn_func

            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            row["fa4_dense_ms"] = bench(lambda: flash_attn_func(qt, kt, vt, softmax_scale=scale, causal=True))
        cfg = rr.RRConfig(stride=stride, block_size=block, tau=0.95)

        def estimate_and_select():
            scores = estimate_block_scores(q, k, stride=stride, block_size=block, head_shift="round_robin", scale=scale)
            return select_blocks(scores, q_len=length, k_len=length, block_size=block, tau=cfg.tau, selector=cfg.selector,
                                 force_sink=True, force_diagonal=True, dense_last_query_block=True)

        if args.masks == "structured":
            masks = {"structured": estimate_and_select()[0]}
        else:
            masks = {f"d{density:g}": random_mask(hq, length, block, density, seed=length) for density in densities}
        visible = visible_blocks(length, length, block, "cuda")
        for label, mask in masks.items():
            count, index = rr.to_kv_index(mask)
            actual = float(mask.sum() / (visible.sum() * hq))
            row[f"ours_{label}_density"] = actual
            # per-block throughput relative to cuDNN dense: 1.0 = as fast per computed block
            kernels = {"ours": lambda **kw: sparse_kernel(q, k, v, count, index, block_size=block, scale=scale, **kw)}
            if other_attention is not None:
                kernels[args.compare_attention.rsplit(".", 1)[-1]] = lambda: other_attention(
                    q, k, v, count, index, block_size=block, scale=scale)
            for name, settings in args.variants.items():
                settings = dict(settings)
                kernels[f"ours_{name}"] = functools.partial(kernels["ours"], tma=settings.pop("tma", None),
                                                            config=settings)
            if fa4_ok:
                # the select stage hands the Triton kernel its compact lists; FA4 builds its own in attend
                selection = rr.backends.Selection(mask, *rr.reference.to_kv_index(mask))
                kernels["fa4"] = lambda: fa4.attend(q, k, v, selection, block_size=block, scale=scale)
            if not args.no_flex:
                kernels["flex"] = lambda: flex_sparse(q, k, v, mask, block_size=block, scale=scale)
            ours = kernels["ours"]()[0]
            for name, fn in kernels.items():
                t = bench(fn)
                row[f"{name}_{label}_ms"] = t
                row[f"{name}_{label}_vs_cudnn"] = cudnn * actual / t
                if name not in ("ours", "fa4", "flex"):  # versions of our kernel: the same tiles, the same sums
                    row[f"{name}_{label}_max_abs_diff"] = float((fn()[0].float() - ours.float()).abs().max())
        row["estimate_select_ms"] = bench(estimate_and_select)
        for name, fn in (("estimate_select", estimate_and_select), ("estimate", lambda: estimate_block_scores(
                q, k, stride=stride, block_size=block, head_shift="round_robin", scale=scale))):
            row[f"{name}_extra_MiB"] = peak_extra_mib(fn)
        row["scores_MiB"] = hq * cdiv(length, block) ** 2 * 4 / 2**20  # the fp32 [1, Hq, nbq, nbk] it returns
        for splits in (1, 2):
            row[f"estimate_splits{splits}_ms"] = bench(lambda: estimate_block_scores(
                q, k, stride=stride, block_size=block, head_shift="round_robin", scale=scale, config={"SPLITS": splits}))
        scores = estimate_block_scores(q, k, stride=stride, block_size=block, head_shift="round_robin", scale=scale)
        row["select_ms"] = bench(lambda: select_blocks(scores, q_len=length, k_len=length, block_size=block, tau=0.95,
                                                       selector="top_tau", force_sink=True, force_diagonal=True,
                                                       dense_last_query_block=True))
        row["estimate_select_vs_cudnn"] = row["estimate_select_ms"] / cudnn
        for name in ("xattention", "flexprefill", "vertical_slash", "a_shape"):
            settings = {"block_size": block, **({"stride": stride} if name == "xattention" else {})}
            method, method_cfg = methods.get(name), methods.make_config(name, settings)
            row[f"estimate_{name}_ms"] = bench(lambda: method.estimate(q, k, method_cfg))
        records.append(row)
        print({k_: (round(v_, 4) if isinstance(v_, float) else v_) for k_, v_ in row.items()}, flush=True)
        torch.cuda.empty_cache()

    df = pd.DataFrame(records)
    labels = list(masks)
    crossover_label = "d0.5" if "d0.5" in labels else labels[0]
    # crossover: shortest length where estimate + select + sparse attention at d = 0.5 beats dense cuDNN
    total = df["estimate_select_ms"] + df[f"ours_{crossover_label}_ms"]
    faster = df["L"][total < df["sdpa_cudnn_ms"]]
    crossover = int(faster.min()) if len(faster) else None
    props = torch.cuda.get_device_properties(0)
    provenance = (
        f"GPU: {props.name}; torch {torch.__version__}; triton {triton.__version__}; Python {platform.python_version()}; "
        f"date {datetime.date.today()}; command: python {' '.join(map(shlex.quote, sys.argv))}; "
        f"B=1, Hq={hq}, Hkv={hkv}, D={d}, bf16, causal, block {block}, S={stride}, {args.masks} masks, "
        f"{args.layout} layout"
    )
    print(df.to_string(index=False))
    print(f"crossover (est+sel+sparse at {crossover_label} < cuDNN dense): {crossover}")
    print(provenance)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out / "bench_kernels.csv", index=False)
        cols = ["L", "sdpa_flash_ms", "sdpa_cudnn_ms"] + [c for c in df.columns if c.startswith("fa4_") and c.endswith("_ms")] + [
            c for c in df.columns if c.endswith("_ms") and any(c.endswith(f"_{x}_ms") for x in labels)
            and not c.startswith(("fa4_", "flex_"))] + (
            [] if args.no_flex else [f"flex_{x}_ms" for x in labels]) + [
            "estimate_select_ms", "estimate_select_vs_cudnn", "estimate_xattention_ms", "estimate_flexprefill_ms",
            "estimate_vertical_slash_ms"]
        (args.out / "bench_kernels.md").write_text(
            f"# Kernel benchmark\n\n{provenance}\n\n" + df[cols].to_markdown(index=False, floatfmt=".3f")
            + "\n\nPer-block throughput relative to cuDNN dense (1.0 = equal):\n\n"
            + df[["L"] + [c for c in df.columns if c.endswith("_vs_cudnn")]].to_markdown(index=False, floatfmt=".3f")
            + f"\n\nCrossover (estimate + select + sparse at {crossover_label} faster than cuDNN dense): {crossover}\n"
        )
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
        for c in ["sdpa_flash_ms", "sdpa_cudnn_ms"] + [f"ours_{x}_ms" for x in labels] + (
                [] if args.no_flex else [f"flex_{x}_ms" for x in labels]) + ["estimate_select_ms", "estimate_xattention_ms", "estimate_flexprefill_ms"]:
            ax[0].plot(df["L"], df[c], marker="o", label=c.replace("_ms", ""), linestyle="--" if c.startswith("flex") else "-")
        ax[0].set(xscale="log", yscale="log", xlabel="tokens", ylabel="ms", title="time (median)")
        ax[0].legend(fontsize=7)
        for c in [c for c in df.columns if c.endswith("_vs_cudnn") and c != "estimate_select_vs_cudnn"]:
            ax[1].plot(df["L"], df[c], marker="o", label=c.replace("_vs_cudnn", ""), linestyle="--" if c.startswith("flex") else "-")
        ax[1].axhline(0.8, color="gray", lw=0.8)
        ax[1].set(xscale="log", xlabel="tokens", ylabel="cuDNN time per block / ours", title="per-block throughput vs cuDNN dense")
        ax[1].legend(fontsize=7)
        fig.suptitle(provenance[:160], fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out / "bench_kernels.png", dpi=120)


if __name__ == "__main__":
    main()
