"""The estimator's two precision modes on the GPU: block agreement, speed, and SmolLM2 fidelity.

    python tools/compare_estimator_precision.py --out results/kernels/h200

``RRConfig.estimator_precision`` is ``exact`` (the fp32 stride means as two power-of-two-scaled fp16
terms: logits within the reference's fp tolerance) or ``fast`` (one term, the mean rounded to the
input dtype). Spec §3 allows ``fast`` as the default only where it keeps ≥ 0.9999 of the exact
mode's block decisions on the GPU check's inputs and leaves the model's fidelity unchanged within noise. This tool measures:

* agreement: on the inputs of ``tools/gpu_check.py`` (same shapes, seeds and key structure), the
  share of causally visible blocks on which the two modes' Triton masks agree;
* speed: estimate + select per call (``triton.testing.do_bench`` medians) at 32K and 128K tokens;
* fidelity: SmolLM2-135M-Instruct (offline asset) on Shakespeare windows, NLL of each window's last
  512 tokens with SDPA and with each mode (``min_sparse_len=0``: sparse at every length), the mean
  difference fast − exact and its standard error over windows.

Writes ``estimator_precision.md`` (and ``.csv`` per table) to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention import assets, reference  # noqa: E402

import gpu_check  # noqa: E402  (tools/, on sys.path when this script runs)

C = rr.RRConfig
# gpu_check's cases; of SmolLM2's shape, only the paper's head shift (round_robin), as measured before
CASES = [c for c in gpu_check.CASES if not c[0].startswith("GQA3 8192") or c[8].head_shift == "round_robin"]


def masks(q, k, cfg):
    out = {}
    for precision in ("exact", "fast"):
        c = dataclasses.replace(cfg, estimator_precision=precision)
        scores = rr.estimate_block_scores(q, k, c, backend="triton")
        out[precision] = rr.select_blocks(scores, c, q_len=q.shape[2], k_len=k.shape[2], backend="triton")
    return out


def agreement_table():
    rows = []
    for name, b, hq, hkv, lq, lk, d, dtype, cfg in CASES:
        q, k, _ = gpu_check.check_inputs(b, hq, hkv, lq, lk, d, dtype, seed=lq * 31 + hq)
        m = masks(q, k, cfg)
        visible = reference.visible_blocks(lq, lk, cfg.block_size, q.device)[None, None].expand_as(m["exact"])
        differ = int(((m["exact"] != m["fast"]) & visible).sum())
        n_visible = int(visible.sum())
        rows.append(dict(case=name, visible_blocks=n_visible, differing_blocks=differ, agreement=1 - differ / n_visible))
        print(rows[-1], flush=True)
    return rows


def speed_table():
    rows = []
    for hq, hkv, d in ((32, 8, 128), (9, 3, 64)):
        for length in (32768, 131072):
            q, k, _ = gpu_check.check_inputs(1, hq, hkv, length, length, d, torch.bfloat16, seed=length * 31 + hq)
            row = dict(q_heads=hq, kv_heads=hkv, head_dim=d, L=length)
            for precision in ("exact", "fast"):
                cfg = C(estimator_precision=precision)
                row[f"estimate_{precision}_ms"] = do_bench(lambda: rr.estimate_block_scores(q, k, cfg, backend="triton"))
                scores = rr.estimate_block_scores(q, k, cfg, backend="triton")
                row[f"estimate_select_{precision}_ms"] = row[f"estimate_{precision}_ms"] + do_bench(
                    lambda: rr.select_blocks(scores, cfg, q_len=length, k_len=length, backend="triton"))
            rows.append(row)
            print(row, flush=True)
            del q, k
    return rows


def fidelity_table(lengths, windows):
    tokenizer, model = assets.load_smollm2(device="cuda", dtype=torch.bfloat16)
    tokens = tokenizer(assets.corpus("shakespeare")[: 5 * max(lengths) * (windows + 1)], return_tensors="pt").input_ids[0]
    rows = []
    with torch.no_grad():
        for length in lengths:
            nll = {"sdpa": [], "exact": [], "fast": []}
            sparsity = {"exact": [], "fast": []}
            for w in range(windows):
                ids = tokens[w * length : (w + 1) * length][None].cuda()
                if ids.shape[1] < length:
                    break
                target = ids[0, -512:]
                for mode in ("sdpa", "exact", "fast"):
                    if mode == "sdpa":
                        model.set_attn_implementation("sdpa")
                        logits = model(ids, logits_to_keep=513).logits
                    else:
                        rr.hf.configure(model, C(min_sparse_len=0, estimator_precision=mode))
                        with rr.hf.collect_stats(model) as stats:
                            logits = model(ids, logits_to_keep=513).logits
                        sparsity[mode].append(stats.sparsity())
                    nll[mode].append(float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), target)))
            n = len(nll["exact"])
            diffs = [f - e for f, e in zip(nll["fast"], nll["exact"])]
            rows.append(dict(L=length, windows=n, nll_sdpa=statistics.mean(nll["sdpa"]), nll_exact=statistics.mean(nll["exact"]),
                             nll_fast=statistics.mean(nll["fast"]), fast_minus_exact=statistics.mean(diffs),
                             stderr=statistics.stdev(diffs) / n**0.5 if n > 1 else float("nan"),
                             exact_minus_sdpa=statistics.mean(e - s for e, s in zip(nll["exact"], nll["sdpa"])),
                             sparsity_exact=statistics.mean(sparsity["exact"]), sparsity_fast=statistics.mean(sparsity["fast"])))
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="4096,8192,16384")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import pandas as pd

    props = torch.cuda.get_device_properties(0)
    provenance = (f"GPU: {props.name}; torch {torch.__version__}; triton {triton.__version__}; date {datetime.date.today()}; "
                  f"command: python tools/compare_estimator_precision.py {' '.join(sys.argv[1:])}")
    tables = {"agreement": agreement_table(), "speed": speed_table()}
    cached = [assets.cache_dir() / n for n in ("SmolLM2-135M-Instruct.Q4_1.gguf", "shakespeare.txt")]
    if all(p.exists() for p in cached):  # never download here: GPU machines may have no network
        tables["fidelity"] = fidelity_table([int(x) for x in args.lengths.split(",")], args.windows)
    text = f"# Estimator precision: exact vs fast\n\n{provenance}\n"
    for name, rows in tables.items():
        df = pd.DataFrame(rows)
        text += f"\n## {name}\n\n" + df.to_markdown(index=False, floatfmt=".6g") + "\n"
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            df.to_csv(args.out / f"estimator_precision_{name}.csv", index=False)
    print(text)
    if args.out is not None:
        (args.out / "estimator_precision.md").write_text(text)


if __name__ == "__main__":
    main()
