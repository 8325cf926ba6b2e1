"""Decode cost of the rrattention backend: one attention call at Lq = 1 (dense by spec §6) and
greedy generation through transformers, against SDPA.

    python tools/bench_decode.py --out results/decode/h100

Per call (B=1, SmolLM2's 9 query / 3 KV heads, D=64, bf16): microseconds per call of SDPA (GQA by
``enable_gqa``), ``rr.rr_attention`` and ``rr.rr_attention(..., return_stats=True)``, wall clock over
``--calls`` back-to-back calls (host time included: decode is launch-bound), and the output's
relative error against fp32 attention over every key beside SDPA's. Generation: a randomly
initialised Llama of SmolLM2-135M's shape (30 layers; decode cost does not depend on the weights),
``model.generate`` of 1 and of ``1 + --new-tokens`` tokens after a random prompt; ms per new
token = the difference over ``--new-tokens``, best of ``--repeats``. Variants: SDPA, the rrattention
backend (τ=0.95, min_sparse_len 0, so the prefill is sparse), and the same collecting statistics.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64
CFG = rr.RRConfig(tau=0.95, min_sparse_len=0)


def per_call_us(fn, calls: int) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def attention_rows(lengths: list[int], calls: int) -> list[dict]:
    rows = []
    for length in lengths:
        g = torch.Generator(device="cuda").manual_seed(length)
        q = torch.randn(1, HEADS, 1, HEAD_DIM, device="cuda", generator=g).to(torch.bfloat16)
        k, v = (torch.randn(1, KV_HEADS, length, HEAD_DIM, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2))
        group = HEADS // KV_HEADS
        kr, vr = k.float().repeat_interleave(group, 1), v.float().repeat_interleave(group, 1)
        want = torch.softmax(q.float() @ kr.transpose(-1, -2) * HEAD_DIM ** -0.5, -1) @ vr
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
        ours = lambda: rr.rr_attention(q, k, v, CFG)  # noqa: E731
        with_stats = lambda: rr.rr_attention(q, k, v, CFG, return_stats=True)  # noqa: E731
        err = lambda out: float((out.float() - want).norm() / want.norm())  # noqa: E731
        rows.append(dict(kv_len=length, sdpa_us=per_call_us(sdpa, calls), rrattention_us=per_call_us(ours, calls),
                         rrattention_stats_us=per_call_us(with_stats, calls), err_sdpa=err(sdpa()), err_rrattention=err(ours())))
        print(rows[-1], flush=True)
    return rows


def generation_rows(lengths: list[int], new_tokens: int, repeats: int) -> list[dict]:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                      max_position_embeddings=max(lengths) + new_tokens + 1, rope_theta=1e5)
    model = transformers.LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()

    decode_backends: set[str] = set()

    def seconds(ids, n: int, stats: bool) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            if stats:
                with rr.hf.collect_stats(model) as collector:
                    model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
                decode_backends.update(str(r.backends) for r in collector.records if r.q_len == 1)
            else:
                model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    rows = []
    for length in lengths:
        ids = torch.randint(0, config.vocab_size, (1, length), device="cuda", generator=torch.Generator(device="cuda").manual_seed(length))
        row = dict(prompt_len=length)
        for name, stats in (("sdpa", False), ("rrattention", False), ("rrattention_stats", True)):
            if name == "sdpa":
                model.set_attn_implementation("sdpa")
            else:
                rr.hf.configure(model, CFG)
            seconds(ids, 2, stats)  # warm-up: compilation, allocator
            first = min(seconds(ids, 1, stats) for _ in range(repeats))
            whole = min(seconds(ids, 1 + new_tokens, stats) for _ in range(repeats))
            row[f"{name}_ms_per_token"] = (whole - first) / new_tokens * 1e3
        row["decode_backends"] = "; ".join(sorted(decode_backends))  # what ran the decode calls
        decode_backends.clear()
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="4096,8192,32768", help="KV / prompt lengths, comma-separated")
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import pandas as pd
    import transformers

    lengths = [int(x) for x in args.lengths.split(",")]
    calls = pd.DataFrame(attention_rows(lengths, args.calls))
    generation = pd.DataFrame(generation_rows(lengths, args.new_tokens, args.repeats))
    props = torch.cuda.get_device_properties(0)
    provenance = (f"GPU: {props.name}; torch {torch.__version__}; triton {triton.__version__}; "
                  f"transformers {transformers.__version__}; date {datetime.date.today()}; "
                  f"command: python {' '.join(map(shlex.quote, sys.argv))}; rrattention {CFG.to_dict()}")
    text = (f"# Decode cost\n\n{provenance}\n\n## One attention call at Lq = 1 (µs per call; error vs fp32)\n\n"
            + calls.to_markdown(index=False, floatfmt=".4g")
            + f"\n\n## Greedy generation, random-weight SmolLM2-shaped Llama (ms per new token, {args.new_tokens} tokens)\n\n"
            + generation.to_markdown(index=False, floatfmt=".3g") + "\n")
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        calls.to_csv(args.out / "decode_calls.csv", index=False)
        generation.to_csv(args.out / "decode_generate.csv", index=False)
        (args.out / "bench_decode.md").write_text(text)


if __name__ == "__main__":
    main()
