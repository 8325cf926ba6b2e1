"""End-to-end prefill: time-to-first-token of SmolLM2-135M-Instruct (real weights) on natural text,
dense SDPA vs rrattention at its defaults, with the sparsity rrattention chose at each length.

    python tools/bench_prefill.py --out results/prefill/h100

TTFT is one forward pass over the prompt producing the first new token's logits (no cache kept),
median of ``--repeats`` runs after two warm-up passes, timed with CUDA events. The text is Shakespeare from
the offline corpus; lengths past the model's 8K training window are fine for timing. The NLL of
the last 512 tokens is reported beside it (meaningful only within the 8K window). Sparsity is the
mean over layers of spec §6's per-call sparsity; ``dense_calls`` the share of prefill attention calls
that ran dense (spec §6: below the crossover ``min_sparse_len``, every call of the model is dense).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention import assets  # noqa: E402


def time_forward(model, ids, repeats: int) -> tuple[float, torch.Tensor]:
    times = []
    with torch.no_grad():
        logits = model(ids, logits_to_keep=513).logits  # warm-up: compilation, allocator, library handles
        model(ids, logits_to_keep=1)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(ids, logits_to_keep=1)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times), logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="4096,8192,16384,32768,65536,131072")
    ap.add_argument("--repeats", type=int, default=5)
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
    rows = []
    for length in lengths:
        ids = tokens[:length][None].cuda()
        nll = lambda logits: torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, -512:]).item()  # noqa: E731
        model.set_attn_implementation("sdpa")
        dense_ms, dense_logits = time_forward(model, ids, args.repeats)
        rr.hf.configure(model, cfg)
        sparse_ms, sparse_logits = time_forward(model, ids, args.repeats)
        with rr.hf.collect_stats(model) as stats, torch.no_grad():
            model(ids, logits_to_keep=1)
        prefill = stats.prefill_records()
        row = dict(L=length, sdpa_ttft_ms=dense_ms, rrattention_ttft_ms=sparse_ms, speedup=dense_ms / sparse_ms,
                   sparsity=stats.sparsity(), dense_calls=sum(r.is_dense for r in prefill) / len(prefill),
                   nll_last512_sdpa=nll(dense_logits), nll_last512_rrattention=nll(sparse_logits))
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    df = pd.DataFrame(rows)
    props = torch.cuda.get_device_properties(0)
    commit = os.environ.get("RRATTENTION_GIT_COMMIT", "unknown")
    provenance = (f"GPU: {props.name}; torch {torch.__version__}; triton {triton.__version__}; git {commit}; "
                  f"transformers {__import__('transformers').__version__}; date {datetime.date.today()}; "
                  f"command: python {' '.join(map(shlex.quote, sys.argv))}; SmolLM2-135M-Instruct (GGUF Q4_1 "
                  f"dequantised to bf16), B=1, rrattention {cfg.to_dict()}")
    print(df.to_string(index=False))
    print(provenance)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out / "bench_prefill.csv", index=False)
        (args.out / "bench_prefill.md").write_text(
            f"# Prefill time-to-first-token\n\n{provenance}\n\n" + df.to_markdown(index=False, floatfmt=".3f") + "\n")


if __name__ == "__main__":
    main()
