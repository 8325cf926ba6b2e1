"""Host time per attention call, sparse and dense: how long the CPU takes to issue one call.

    python tools/bench_host.py --out results/prefill/h200/bench_host.md

For each shape (B=1, Lq = Lk, bf16, sparse at every length except in the dense entries), after
warm-up and a synchronisation, ``N`` calls are issued back to back and the wall time of issuing them
is divided by ``N`` (the GPU queue never fills: N·4 launches stay under the driver's queue depth,
and the GPU work of one call is listed beside it). Entry points, as available in the installed
version of the package:

* ``rr_attention``: the public function (validation, planning, run);
* ``plan.run``: a plan built once, run per call (what a model's layers do after the first), its
  kernels launched through the plan's cached launchers;
* ``plan.run, Triton launch path``: the same with ``bind_backends=False`` (every launch through
  Triton's own argument binding: the cost the launch cache removes);
* ``hf hook``: ``rr.hf.attention_forward`` on an attention module, as transformers calls it per layer;
* ``hf hook, dense call`` and ``transformers SDPA``: the hook on a call that runs dense (``Lk`` below
  ``min_sparse_len``, as every call of a short prompt) and transformers' own SDPA function that it
  then calls (the difference is the hook's host cost on the dense path);
* ``plan.run, CUDA graphs`` and ``plan.run, CUDA graphs, out given``: the same with
  ``cuda_graphs=True`` (:mod:`rrattention.graphs`: the inputs copied into the plan's static
  buffers, its graph replayed, the output copied out or cloned), as every call of a new prompt
  length's pass runs;
* ``plan.run, CUDA graphs, own tensors`` and ``hf hook, CUDA graphs``: calls that come back with the
  same tensors and keep no selection (a hook that collects no statistics, in a pass of a prompt
  length seen before): from the second such call on, a graph captured on those tensors is replayed
  with no copies;
* ``graph replay``: the hook's call captured in a CUDA graph by hand and replayed (no host work
  per kernel, no copies: the floor).
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import os
import shlex
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention.integrations import _calls  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

SHAPES = [(9, 3, 64, 4096), (9, 3, 64, 16384), (32, 8, 128, 4096)]  # (Hq, Hkv, D, L): SmolLM2, Llama-3-8B


def host_us(fn, calls: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    issued = time.perf_counter() - start
    torch.cuda.synchronize()
    return issued / calls * 1e6


def device_us(fn, calls: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--label", default=os.environ.get("RRATTENTION_GIT_COMMIT", "working tree"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import pandas as pd

    cfg = rr.RRConfig(min_sparse_len=0)
    rows = []
    for q_heads, kv_heads, dim, length in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(length)
        # as transformers hands them over: q a [B, L, H, D] tensor viewed as [B, H, L, D]
        q = torch.randn(1, length, q_heads, dim, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2)
        k, v = (torch.randn(1, kv_heads, length, dim, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2))
        module = types.SimpleNamespace(layer_idx=3, num_key_value_groups=q_heads // kv_heads, is_causal=True)
        _calls.attach([module], cfg, None, (0, 1))  # (0, 1): not tensor-parallel
        graphed_module = types.SimpleNamespace(layer_idx=3, num_key_value_groups=q_heads // kv_heads, is_causal=True)
        dense_module = types.SimpleNamespace(layer_idx=3, num_key_value_groups=q_heads // kv_heads, is_causal=True)
        _calls.attach([dense_module], rr.RRConfig(min_sparse_len=2 * length), None, (0, 1))
        entries = {"rr_attention": lambda: rr.rr_attention(q, k, v, cfg, layer=3),
                   "hf hook": lambda: rr.hf.attention_forward(module, q, k, v, None),
                   "transformers SDPA": lambda: sdpa_attention_forward(dense_module, q, k, v, None),
                   "hf hook, dense call": lambda: rr.hf.attention_forward(dense_module, q, k, v, None)}
        try:
            _calls.attach([graphed_module], cfg, None, (0, 1), cuda_graphs=True)
            entries["hf hook, CUDA graphs"] = lambda: rr.hf.attention_forward(graphed_module, q, k, v, None)
        except TypeError:  # a version without CUDA graphs
            pass
        if hasattr(rr, "AttentionPlan"):
            plan = rr.AttentionPlan(cfg, q_heads=q_heads, kv_heads=kv_heads, head_dim=dim, dtype=q.dtype, device=q.device,
                                    scale=dim**-0.5, batch=1, q_len=length, k_len=length)
            entries["plan.run"] = lambda: plan.run(q, k, v, 3)
            try:
                jit_plan = rr.AttentionPlan(cfg, q_heads=q_heads, kv_heads=kv_heads, head_dim=dim, dtype=q.dtype,
                                            device=q.device, scale=dim**-0.5, batch=1, q_len=length, k_len=length,
                                            bind_backends=False)
                entries["plan.run, Triton launch path"] = lambda: jit_plan.run(q, k, v, 3)
            except TypeError:  # a version without the launch cache
                pass
            try:
                graph_plan = rr.AttentionPlan(cfg, q_heads=q_heads, kv_heads=kv_heads, head_dim=dim, dtype=q.dtype,
                                              device=q.device, scale=dim**-0.5, batch=1, q_len=length, k_len=length,
                                              cuda_graphs=True)
                entries["plan.run, CUDA graphs"] = lambda: graph_plan.run(q, k, v, 3)
                out = q.new_empty(1, length, q_heads, dim).transpose(1, 2)  # the hook's output layout
                entries["plan.run, CUDA graphs, out given"] = lambda: graph_plan.run(q, k, v, 3, out=out)
                if "keep_selection" in inspect.signature(graph_plan.run).parameters:
                    own_out = torch.empty_like(out)
                    entries["plan.run, CUDA graphs, own tensors"] = lambda: graph_plan.run(
                        q, k, v, 3, out=own_out, keep_selection=False)
            except TypeError:  # a version without CUDA graphs
                pass
        for name, fn in list(entries.items()):
            for _ in range(3):
                fn()
        if "plan.run, CUDA graphs" in entries:  # replayed calls compute what the eager ones do
            replayed = [entries[name]().out for name in entries if name.startswith("plan.run, CUDA graphs")]
            if not (all(torch.equal(out, entries["plan.run"]().out) for out in replayed)
                    and torch.equal(entries["hf hook, CUDA graphs"]()[0], entries["hf hook"]()[0])):
                raise SystemExit(f"CUDA-graph replay differs from the eager call at {(q_heads, kv_heads, dim, length)}")
            if graph_plan.graphs.replays == 0:
                raise SystemExit(f"the graphed plan never replayed: {graph_plan.graphs.declined}")
        if hasattr(rr, "AttentionPlan"):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                entries["hf hook"]()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                entries["hf hook"]()
            entries["graph replay"] = graph.replay
        for name, fn in entries.items():
            host = statistics.median(host_us(fn, args.calls) for _ in range(args.repeats))
            device = statistics.median(device_us(fn, args.calls) for _ in range(args.repeats))
            rows.append(dict(version=args.label, entry=name, q_heads=q_heads, kv_heads=kv_heads, head_dim=dim, L=length,
                             host_us_per_call=host, device_us_per_call=device))
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    props = torch.cuda.get_device_properties(0)
    provenance = (f"GPU: {props.name}; torch {torch.__version__}; triton {triton.__version__}; version {args.label}; "
                  f"date {datetime.date.today()}; command: python {' '.join(map(shlex.quote, sys.argv))}")
    print(df.to_string(index=False))
    print(provenance)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out.with_suffix(".csv"), index=False)
        args.out.write_text(f"# Host time per attention call\n\n{provenance}\n\n" + df.to_markdown(index=False, floatfmt=".1f") + "\n")


if __name__ == "__main__":
    main()
