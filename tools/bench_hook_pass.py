"""The HF hook's host cost per forward pass, where a pass is host-bound: a short prompt through a
random-weight model with SmolLM2-135M's attention (30 layers, 9 query / 3 KV heads, D=64) and a
small vocabulary, every call below the crossover and so dense, on any device (the CPU included).

    python tools/bench_hook_pass.py --hidden 72 --out results/host/cpu

``--hidden`` (a multiple of the 9 heads) narrows the rest of the model (SmolLM2's is 576): on a
CPU its matrix products would otherwise take the pass's time and hide the host's.

The variants take turns pass by pass: transformers' SDPA; the same SDPA function registered under
another name with transformers' SDPA mask (what any custom attention name costs); rrattention with
its plan kept across passes (a prompt length seen before); rrattention configured afresh before
each pass (a new prompt's first pass, as ``tools/bench_prefill.py`` times it). A pass is timed from
its start until its output is ready (the device synchronised before and after). Reported: the
minimum, 25th percentile and median of each variant's passes, their differences from SDPA's, and
the 25th percentile's difference per layer.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402

from report import command, write_table  # noqa: E402  (tools/, on sys.path when this script runs)

REGISTERED_SDPA = "sdpa_by_name"


def smollm2_shaped(layers: int, hidden: int, device: str) -> torch.nn.Module:
    config = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
                                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=512,
                                      rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return transformers.LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=576, help="the model's hidden size (SmolLM2's: 576)")
    ap.add_argument("--passes", type=int, default=500, help="timed passes of each variant")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (a CPU run)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import pandas as pd

    torch.set_num_threads(args.threads)
    transformers.AttentionInterface.register(REGISTERED_SDPA, sdpa_attention_forward)
    AttentionMaskInterface.register(REGISTERED_SDPA, sdpa_mask)
    model = smollm2_shaped(args.layers, args.hidden, args.device)
    ids = torch.randint(0, 512, (1, args.tokens), generator=torch.Generator().manual_seed(0)).to(args.device)
    cfg = rr.RRConfig()
    rr.hf.configure(model, cfg)
    variants = {"sdpa": lambda: model.set_attn_implementation("sdpa"),
                "sdpa, registered by name": lambda: model.set_attn_implementation(REGISTERED_SDPA),
                "rrattention, plan kept": lambda: model.set_attn_implementation(rr.hf.ATTN_IMPLEMENTATION),
                "rrattention, configured each pass": lambda: rr.hf.configure(model, cfg)}
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    times = {name: [] for name in variants}
    with torch.no_grad():
        for name, switch in variants.items():  # warm-up
            switch()
            model(ids, logits_to_keep=1)
        for _ in range(args.passes):
            for name, switch in variants.items():
                switch()
                sync()
                start = time.perf_counter()
                model(ids, logits_to_keep=1)
                sync()
                times[name].append((time.perf_counter() - start) * 1e3)
    stats = pd.DataFrame({name: pd.Series(t).quantile([0.0, 0.25, 0.5]).to_numpy() for name, t in times.items()},
                         index=["min_ms", "p25_ms", "median_ms"]).T
    for column in ("min_ms", "p25_ms", "median_ms"):
        stats[column.replace("_ms", "_vs_sdpa_ms")] = stats[column] - stats.loc["sdpa", column]
    stats["p25_vs_sdpa_us_per_layer"] = stats["p25_vs_sdpa_ms"] * 1e3 / args.layers
    stats = stats.rename_axis("attention").reset_index()
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"CPU ({platform.processor() or platform.machine()}, {args.threads} torch thread(s))")
    provenance = (f"device: {where}; torch {torch.__version__}; transformers {transformers.__version__}; "
                  f"git {os.environ.get('RRATTENTION_GIT_COMMIT', 'unknown')}; date {datetime.date.today()}; "
                  f"command: {command()}; {args.layers} layers, hidden size {args.hidden}, {args.tokens} tokens, "
                  f"{args.passes} passes each")
    write_table(stats, args.out, "bench_hook_pass", "The HF hook's host cost per forward pass", provenance,
                floatfmt=".3f")


if __name__ == "__main__":
    main()
