"""End-to-end prefill: time-to-first-token of SmolLM2-135M-Instruct (real weights) on natural text,
dense SDPA vs rrattention at its defaults, with the sparsity rrattention chose at each length.

    python tools/bench_prefill.py --out results/prefill/h100

TTFT is one forward pass over the prompt producing the first new token's logits (no cache kept),
median of ``--repeats`` runs after two warm-up passes, timed with CUDA events, the attentions taking
turns pass by pass; each pass plans afresh, as a new prompt's does. ``rrattention`` runs the
defaults (``cuda_graphs=None``: CUDA graphs for short calls), ``rrattention_eager`` and
``rrattention_graphs`` force ``cuda_graphs`` False and True (:mod:`rrattention.graphs`;
``graphs_logits_equal``: their logits are equal bit for bit). ``--host-profile L`` writes the
functions that took the host's time in one pass of each (cProfile) to ``host_profile.md``. ``*_host_issue_ms``
is the host's time to issue the pass (when it is close to the TTFT the pass is host-bound). The text is Shakespeare from
the offline corpus; lengths past the model's 8K training window are fine for timing. The NLL of
the last 512 tokens is reported beside it (meaningful only within the 8K window). Sparsity is the
mean over layers of spec §6's per-call sparsity; ``dense_calls`` the share of prefill attention calls
that ran dense (spec §6: below the crossover ``min_sparse_len``, every call of the model is dense).

``--profile 16384,32768`` also profiles one forward pass at those lengths with each attention
(``torch.profiler``): wall time, the time the host took to issue the pass (host-bound when it is
close to the wall time), the summed GPU kernel time, the host's calls into the CUDA runtime and
driver (their count and time, and how many synchronised with the GPU), and the kernels that took
the GPU time, written to ``profile.md`` beside the table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention import assets  # noqa: E402


def time_forwards(model, ids, variants: dict, repeats: int) -> dict[str, tuple[float, float, torch.Tensor]]:
    """Each variant's (median GPU time of a pass, median host time to issue it, warm-up logits), ms.

    ``variants`` maps a name to a function that switches the model to it. The variants take turns
    pass by pass (so drifting host speed hits them alike), and every switch configures afresh: each
    timed pass plans its attention as a new prompt's pass does."""
    times = {name: [] for name in variants}
    issued = {name: [] for name in variants}
    logits = {}
    with torch.no_grad():
        for name, switch in variants.items():
            switch()
            logits[name] = model(ids, logits_to_keep=513).logits  # warm-up: compilation, allocator, library handles
            model(ids, logits_to_keep=1)
        for _ in range(repeats):
            for name, switch in variants.items():
                switch()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                host = time.perf_counter()
                start.record()
                model(ids, logits_to_keep=1)
                end.record()
                issued[name].append((time.perf_counter() - host) * 1e3)
                torch.cuda.synchronize()
                times[name].append(start.elapsed_time(end))
    return {name: (statistics.median(times[name]), statistics.median(issued[name]), logits[name]) for name in variants}


def profile_forward(model, ids, label: str, top_kernels: int = 8) -> tuple[dict, list]:
    """One profiled forward pass (after the timed ones): wall, host-issue and kernel times (ms)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        model(ids, logits_to_keep=1)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            model(ids, logits_to_keep=1)
            issued = time.perf_counter() - start
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.self_device_time_total for e in kernels)
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:top_kernels]
    # the host's calls into the CUDA runtime and driver (cuda*, cu*), and those that wait for the GPU
    api = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.key.startswith("cu")]
    summary = dict(L=ids.shape[1], attention=label, wall_ms=wall * 1e3, host_issue_ms=issued * 1e3,
                   gpu_kernels_ms=total_us / 1e3, kernel_launches=sum(e.count for e in kernels),
                   cuda_api_calls=sum(e.count for e in api),
                   cuda_api_ms=sum(e.self_cpu_time_total for e in api) / 1e3,
                   host_syncs=sum(e.count for e in api if "Synchronize" in e.key))
    rows = [dict(L=ids.shape[1], attention=label, kernel=e.key[:70], calls=e.count, ms=e.self_device_time_total / 1e3)
            for e in top]
    return summary, rows


def host_profile(model, ids, label: str, top: int = 25) -> str:
    """The functions that took the host's time in one forward pass (after one unprofiled pass)."""
    import cProfile
    import io
    import pstats

    with torch.no_grad():
        model(ids, logits_to_keep=1)
        torch.cuda.synchronize()
        profiler = cProfile.Profile()
        profiler.enable()
        model(ids, logits_to_keep=1)
        profiler.disable()
        torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return f"## L={ids.shape[1]}, {label}\n\n```\n{out.getvalue().strip()}\n```\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="4096,8192,16384,32768,65536,131072")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--profile", default="", help="lengths to profile one forward pass at (comma-separated)")
    ap.add_argument("--profile-top", type=int, default=8, help="kernels listed per profiled pass")
    ap.add_argument("--host-profile", default="", help="lengths to profile the host's Python in one pass at "
                    "(cProfile, comma-separated; written to host_profile.md)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import pandas as pd

    tokenizer, model = assets.load_smollm2(device="cuda", dtype=torch.bfloat16)
    lengths = [int(x) for x in args.lengths.split(",")]
    # about 4 characters a token: tokenise only what the longest prompt needs
    tokens = tokenizer(assets.corpus("shakespeare")[: 6 * max(lengths)], return_tensors="pt").input_ids[0]
    if len(tokens) < max(lengths):
        raise SystemExit(f"the corpus has only {len(tokens)} tokens")
    cfg = rr.RRConfig()
    profiled = {int(x) for x in args.profile.split(",") if x}
    host_profiled = {int(x) for x in args.host_profile.split(",") if x}
    rows, summaries, kernels, host_profiles = [], [], [], []
    props = torch.cuda.get_device_properties(0)
    commit = os.environ.get("RRATTENTION_GIT_COMMIT", "unknown")
    provenance = (f"GPU: {props.name}; torch {torch.__version__}; triton {triton.__version__}; git {commit}; "
                  f"transformers {__import__('transformers').__version__}; date {datetime.date.today()}; "
                  f"command: python {' '.join(map(shlex.quote, sys.argv))}; SmolLM2-135M-Instruct (GGUF Q4_1 "
                  f"dequantised to bf16), B=1, rrattention {cfg.to_dict()}")

    def save(rows):  # after every length: a run cut short keeps what it measured
        if args.out is None:
            return
        args.out.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(rows)
        table.to_csv(args.out / "bench_prefill.csv", index=False)
        (args.out / "bench_prefill.md").write_text(
            f"# Prefill time-to-first-token\n\n{provenance}\n\n" + table.to_markdown(index=False, floatfmt=".3f") + "\n")
        if host_profiles:
            (args.out / "host_profile.md").write_text(
                f"# The host's time in one forward pass (cProfile)\n\n{provenance}\n\n" + "\n".join(host_profiles))

    variants = {"sdpa": lambda: model.set_attn_implementation("sdpa"),
                "rrattention": lambda: rr.hf.configure(model, cfg),
                "rrattention_eager": lambda: rr.hf.configure(model, cfg, cuda_graphs=False),
                "rrattention_graphs": lambda: rr.hf.configure(model, cfg, cuda_graphs=True)}
    for length in lengths:
        ids = tokens[:length][None].cuda()
        nll = lambda logits: torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, -512:]).item()  # noqa: E731
        timed = time_forwards(model, ids, variants, args.repeats)
        for name, switch in variants.items():
            if length in profiled:
                switch()
                summary, top = profile_forward(model, ids, name, args.profile_top)
                summaries.append(summary), kernels.extend(top)
            if length in host_profiled:
                switch()
                host_profiles.append(host_profile(model, ids, name))
        rr.hf.configure(model, cfg)
        with rr.hf.collect_stats(model) as stats, torch.no_grad():
            model(ids, logits_to_keep=1)
        prefill = stats.prefill_records()
        dense_ms = timed["sdpa"][0]
        row = dict(L=length, sdpa_ttft_ms=dense_ms)
        for name in ("rrattention", "rrattention_eager", "rrattention_graphs"):
            suffix = name.removeprefix("rrattention")
            row[f"{name}_ttft_ms"] = timed[name][0]
            row[f"speedup{suffix}"] = dense_ms / timed[name][0]
        row.update(sparsity=stats.sparsity(), dense_calls=sum(r.is_dense for r in prefill) / len(prefill),
                   nll_last512_sdpa=nll(timed["sdpa"][2]), nll_last512_rrattention=nll(timed["rrattention"][2]),
                   graphs_logits_equal=bool(torch.equal(timed["rrattention_graphs"][2], timed["rrattention_eager"][2])),
                   **{f"{name}_host_issue_ms": timed[name][1] for name in variants})
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        save(rows)
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    print(provenance)
    if host_profiles:
        print("\n".join(host_profiles))
    if summaries:
        text = (f"# One profiled forward pass\n\n{provenance}\n\n" + pd.DataFrame(summaries).to_markdown(index=False, floatfmt=".2f")
                + f"\n\nKernels that took the GPU time (top {args.profile_top} per pass, self time):\n\n"
                + pd.DataFrame(kernels).to_markdown(index=False, floatfmt=".2f") + "\n")
        print(text)
        if args.out is not None:
            (args.out / "profile.md").write_text(text)


if __name__ == "__main__":
    main()
