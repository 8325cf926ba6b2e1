"""Video-LLM prefill at realistic visual token counts: a random Qwen2-VL, SDPA vs rrattention,
with the sparsity reached and the split between dense (vision tower) and sparse (language model) calls.

    python tools/bench_vlm_prefill.py --out results/videomme/h200

A timing, not a quality claim: no VLM weights or Video-MME videos are reachable on the GPU
machine, so the model is built from a config with random weights and the frames are random
``pixel_values_videos`` (no decoding). The language model has Qwen2-VL-7B's attention geometry
(hidden 3584, 28 query / 4 KV heads, head dim 128, M-RoPE sections 16/24/24, MLP 18944) with
``--layers`` layers; the vision tower is small (2 blocks, width 256) but runs over the real patch
counts: ``frames`` frames of a ``gh×gw`` patch grid, one chunk of ``gh·gw`` patches per pair of
frames, ``frames/2 · gh·gw/4`` visual tokens. Random weights attend almost uniformly, so the
sparsity at a given τ is lower than a trained model's; the τ sweep shows the time at several
sparsities.

Per case: the whole prefill (vision tower + language model, ``logits_to_keep=1``) under SDPA and
under rrattention at each τ (default ``RRConfig`` otherwise: ``min_sparse_len`` is the measured
crossover), median of ``--repeats`` passes after two warm-ups (CUDA events on a GPU); the vision
tower alone (``get_video_features``, the same SDPA calls in both); then one pass under
``collect_stats``: the language model's sparsity (spec §6), its calls that ran dense, and the
vision tower's calls (all dense, reason ``non-causal attention (encoder)``). ``max_abs_dlogit``
(rrattention's last-token logits against SDPA's) is a sanity check only: with random weights the
attention's share of the logits is small.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention.integrations import hf  # noqa: E402

from report import command, write_table  # noqa: E402  (tools/, on sys.path when this script runs)

VOCAB, VIDEO, V_START, V_END = 2048, 2001, 2002, 2003
GEOMETRY = {  # language model; the vision tower is the same small one for both
    "qwen2-vl-7b": dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                        mrope_section=[16, 24, 24]),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, mrope_section=[2, 3, 3]),
}


def build_model(geometry: str, layers: int, device: str, dtype: torch.dtype):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    g = dict(GEOMETRY[geometry])
    section = g.pop("mrope_section")
    text = dict(g, num_hidden_layers=layers, vocab_size=VOCAB, max_position_embeddings=262144, bos_token_id=None,
                eos_token_id=0, pad_token_id=0,
                rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 1000000.0})
    vision = dict(depth=2, embed_dim=256, num_heads=4, hidden_size=g["hidden_size"], mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=2000, video_token_id=VIDEO,
                        vision_start_token_id=V_START, vision_end_token_id=V_END)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(cfg)
    return model.to(dtype).eval()


def make_inputs(frames: int, gh: int, gw: int, device: str, dtype: torch.dtype, text: int = 64) -> dict:
    """Random frames as Qwen2-VL's processor lays them out, between ``text`` text tokens each side."""
    if frames % 2 or gh % 2 or gw % 2:
        raise ValueError(f"frames and the patch grid must be even (temporal patch 2, merge 2), got {frames}:{gh}x{gw}")
    t = frames // 2
    visual = t * gh * gw // 4
    g = torch.Generator().manual_seed(1)
    words = lambda n: torch.randint(3, 2000, (n,), generator=g)  # noqa: E731
    ids = torch.cat([words(text), torch.tensor([V_START]), torch.full((visual,), VIDEO), torch.tensor([V_END]), words(text)])[None]
    return {"input_ids": ids.to(device), "mm_token_type_ids": (2 * (ids == VIDEO).long()).to(device),
            "pixel_values_videos": torch.randn(t * gh * gw, 3 * 2 * 14 * 14, generator=g).to(device, dtype),
            "video_grid_thw": torch.tensor([[t, gh, gw]], device=device)}


def timed(fn, repeats: int, device: str) -> tuple[float, object]:
    """Median milliseconds of ``fn()`` over ``repeats`` calls after two warm-ups, and its last result."""
    with torch.no_grad():
        out = fn()
        fn()
        times = []
        for _ in range(repeats):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                out = fn()
                times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), out


def run(cases: list[tuple[int, int, int]], taus: list[float], geometry: str, layers: int, repeats: int, device: str,
        dtype: torch.dtype, min_sparse_len: int | None) -> list[dict]:
    model = build_model(geometry, layers, device, dtype)
    rows = []
    for frames, gh, gw in cases:
        inputs = make_inputs(frames, gh, gw, device, dtype)
        prefill = lambda: model(**inputs, logits_to_keep=1).logits  # noqa: E731
        vision = lambda: model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])  # noqa: E731
        model.set_attn_implementation("sdpa")
        sdpa_ms, sdpa_logits = timed(prefill, repeats, device)
        vision_ms, _ = timed(vision, repeats, device)
        n_tokens = inputs["input_ids"].shape[1]
        visual = int((inputs["input_ids"] == VIDEO).sum())
        for tau in taus:
            hf.configure(model, rr.RRConfig(tau=tau, min_sparse_len=min_sparse_len))
            rr_ms, rr_logits = timed(prefill, repeats, device)
            with torch.no_grad(), hf.collect_stats(model) as stats:
                prefill()
            lm = stats.prefill_records()
            encoder = stats.encoder_records()
            rows.append({
                "frames": frames, "grid": f"{gh}x{gw}", "visual_tokens": visual, "prefill_tokens": n_tokens, "tau": tau,
                "sdpa_ms": sdpa_ms, "rrattention_ms": rr_ms, "speedup": sdpa_ms / rr_ms, "vision_ms": vision_ms,
                "sparsity": stats.sparsity(), "lm_calls": len(lm), "lm_sparse_calls": sum(not r.is_dense for r in lm),
                "lm_dense_calls": sum(r.is_dense for r in lm), "vision_calls": len(encoder),
                "vision_dense_calls": sum(r.is_dense for r in encoder),
                "max_abs_dlogit": (rr_logits.float() - sdpa_logits.float()).abs().max().item(),
            })
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    return rows


def parse_cases(text: str) -> list[tuple[int, int, int]]:
    """``"64:32x64,256:32x64"`` → ``[(64, 32, 64), (256, 32, 64)]`` (frames : patch rows x patch columns)."""
    out = []
    for item in text.split(","):
        frames, grid = item.split(":")
        gh, gw = grid.split("x")
        out.append((int(frames), int(gh), int(gw)))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="64:32x64,128:32x64,256:32x64",
                    help="frames:patch_rows x patch_cols, comma-separated (default: 16K, 32K, 64K visual tokens)")
    ap.add_argument("--taus", default="0.95,0.5,0.2",
                    help="random weights attend almost uniformly: only a low tau reaches a high sparsity here")
    ap.add_argument("--geometry", choices=sorted(GEOMETRY), default="qwen2-vl-7b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--min-sparse-len", type=int, default=None, help="default: the measured crossover (RRConfig's)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import pandas as pd

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    rows = run(parse_cases(args.cases), [float(t) for t in args.taus.split(",")], args.geometry, args.layers,
               args.repeats, args.device, dtype, args.min_sparse_len)
    df = pd.DataFrame(rows)
    import transformers

    machine = torch.cuda.get_device_properties(0).name if args.device == "cuda" else "cpu"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    provenance = (f"Device: {machine}; torch {torch.__version__}; triton {triton_version}; transformers "
                  f"{transformers.__version__}; git {os.environ.get('RRATTENTION_GIT_COMMIT', 'unknown')}; date "
                  f"{datetime.date.today()}; command: {command()}; random Qwen2-VL, "
                  f"language model {args.geometry} geometry with {args.layers} layers, {dtype}, B=1; random frames")
    write_table(df, args.out, "bench_vlm_prefill",
                "Video-LLM prefill: SDPA vs rrattention (random weights: a timing, not a quality claim)", provenance,
                "Milliseconds, medians; `vision_ms` is the vision tower alone (the same SDPA calls under both); "
                "`lm_*_calls` count the language model's prefill calls, `vision_*_calls` the vision tower's (all dense: "
                "non-causal); `max_abs_dlogit` is a sanity check, not a fidelity measure (random weights).")


if __name__ == "__main__":
    main()
