"""Attention kernels on the block masks a model selects: SmolLM2's own prefill masks at one length,
each layer's timed with our Triton kernel and (when ``flash-attn-4`` is installed) FA4's block-sparse
kernel, beside cuDNN dense, and beside two kinds of random masks built from each layer's own:

* ``rows``: the same number of blocks in every (head, query block) tile, at random visible places
  (the sink and the diagonal kept where the model's mask has them): the same work per tile, other
  key blocks;
* ``heads``: the same number of blocks per head, spread over the rows in proportion to their visible
  blocks (as ``bench_kernels.py``'s random masks are): the same work per head, other work per tile.

    python tools/bench_model_masks.py --length 32768 --out results/kernels/h200/model-masks

It asks why a model's masks run slower per computed block than random ones of the same density. A
least-squares fit over the layers and mask kinds, ``ms = a · blocks + b · tiles`` (tiles: the (head,
query block) rows holding any block; every row holds its diagonal, so at one length ``b · tiles`` is
the fit's intercept), splits each kernel's time into a part per computed block and a fixed part per
tile. ``--variants`` also times launch-config variants of our kernel (as ``bench_kernels.py``'s).
q, k and v are Gaussian in the model's ``[B, L, H, D]`` memory (the kernels' time does not depend on
the values); do_bench medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention import assets  # noqa: E402
from rrattention.kernels.block_sparse_attention import block_sparse_attention as sparse_kernel  # noqa: E402
from rrattention.reference import visible_blocks  # noqa: E402
from report import command, write_table  # noqa: E402


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median")


def model_masks(length: int, cfg: rr.RRConfig) -> tuple[dict[int, torch.Tensor], tuple[int, int, int]]:
    """``{layer: bool [1, Hq, nbq, nbk]}`` of one SmolLM2 prefill over ``length`` tokens of
    Shakespeare (the sparse layers only), and the model's ``(Hq, Hkv, D)``."""
    tokenizer, model = assets.load_smollm2(device="cuda", dtype=torch.bfloat16)
    ids = tokenizer(assets.corpus("shakespeare")[: 6 * length], return_tensors="pt").input_ids[:, :length].cuda()
    if ids.shape[1] < length:
        raise SystemExit(f"the corpus has only {ids.shape[1]} tokens")
    rr.hf.configure(model, cfg)
    with torch.no_grad(), rr.hf.collect_stats(model, block_masks=True) as stats:
        model(ids, logits_to_keep=1)
    masks = {r.layer: r.block_mask.cuda() for r in stats.prefill_records() if not r.is_dense}
    mc = model.config
    shape = (mc.num_attention_heads, mc.num_key_value_heads, mc.hidden_size // mc.num_attention_heads)
    del model
    torch.cuda.empty_cache()
    return masks, shape


def ranked_mask(priority: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The ``counts[..., row]`` highest-``priority`` blocks of every row."""
    order = priority.argsort(dim=-1, descending=True)
    keep = torch.arange(priority.shape[-1], device=priority.device) < counts[..., None]
    return torch.zeros_like(keep).scatter_(-1, order, keep)


def random_like(mask: torch.Tensor, visible: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """A random mask with ``mask``'s blocks per tile (``rows``) or per head (``heads``); forced
    blocks (sink, diagonal) first, then random ones of the causally ``visible`` grid ``[nbq, nbk]``."""
    nbq, nbk = mask.shape[-2:]
    g = torch.Generator(device=mask.device).manual_seed(seed)
    priority = torch.rand(mask.shape, generator=g, device=mask.device)
    forced = torch.zeros_like(mask)
    forced[..., 0] = mask[..., 0]
    forced |= torch.eye(nbq, nbk, dtype=torch.bool, device=mask.device) & mask
    priority = torch.where(forced, 2.0, torch.where(visible, priority, -1.0))
    counts = mask.sum(-1)
    if kind == "heads":
        rows_visible = visible.sum(-1).float()
        density = mask.sum((-2, -1)).float() / visible.sum()  # [B, Hq]
        counts = torch.maximum((density[..., None] * rows_visible).round().long(), forced.sum(-1))
    return ranked_mask(priority, counts.clamp(max=nbk)) & visible


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=32768)
    ap.add_argument("--variants", type=json.loads, default={}, metavar="JSON",
                    help='launch-config variants of our kernel, e.g. \'{"heads_first": {"HEADS_FIRST": true}}\'')
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = rr.RRConfig()
    masks, (hq, hkv, d) = model_masks(args.length, cfg)
    if not masks:
        raise SystemExit(f"every call at {args.length} tokens ran dense: nothing to time")
    block, scale = cfg.block_size, d**-0.5
    q, k, v = (torch.randn(1, args.length, h, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
               for h in (hq, hkv, hkv))
    kr, vr = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_ms = bench(lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True, scale=scale))
    grid = visible_blocks(args.length, args.length, block, "cuda")
    visible = int(grid.sum()) * hq
    fa4 = rr.backends.get("fa4")
    fa4_reasons = fa4.not_supported_reasons("attention", rr.methods.base.problem_of(q, k, cfg))
    rows = []
    for layer, mask in masks.items():
        for kind in ("model", "rows", "heads"):
            m = mask if kind == "model" else random_like(mask, grid, kind, seed=layer)
            count, index = rr.to_kv_index(m)
            tiles = count[count > 0]
            row = dict(layer=layer, masks=kind, density=float(m.sum()) / visible, blocks=int(m.sum()),
                       tiles=int(tiles.numel()), blocks_per_tile=float(tiles.float().mean()),
                       tiles_le4=float((tiles <= 4).float().mean()))
            row["triton_ms"] = bench(lambda: sparse_kernel(q, k, v, count, index, block_size=block, scale=scale))
            for name, settings in args.variants.items():
                row[f"triton_{name}_ms"] = bench(lambda: sparse_kernel(q, k, v, count, index, block_size=block,
                                                                       scale=scale, config=settings))
            if not fa4_reasons:
                selection = rr.backends.Selection(m)
                row["fa4_ms"] = bench(lambda: fa4.attend(q, k, v, selection, block_size=block, scale=scale))
            for name in [key.removesuffix("_ms") for key in row if key.endswith("_ms")]:
                # 1.0: as fast per computed block as cuDNN dense
                row[f"{name}_vs_cudnn"] = cudnn_ms / visible * row["blocks"] / row[f"{name}_ms"]
            rows.append(row)
            print({key: round(val, 4) if isinstance(val, float) else val for key, val in row.items()}, flush=True)
    df = pd.DataFrame(rows)
    kernels = [c.removesuffix("_ms") for c in df.columns if c.endswith("_ms")]
    totals = df.groupby("masks", sort=False)[["blocks", "tiles"] + [f"{n}_ms" for n in kernels]].sum()
    for name in kernels:
        totals[f"{name}_vs_cudnn"] = cudnn_ms / visible * totals["blocks"] / totals[f"{name}_ms"]
    fits = []
    for name in kernels:
        (a, b), *_ = np.linalg.lstsq(df[["blocks", "tiles"]].to_numpy(float), df[f"{name}_ms"].to_numpy(), rcond=None)
        fits.append(f"- {name}: {a * 1e3:.4f} µs per computed block, {b * 1e3:.4f} µs per tile "
                    f"(a tile's fixed cost = {b / a:.1f} blocks)")
    notes = (f"cuDNN dense causal: {cudnn_ms:.3f} ms ({cudnn_ms / visible * 1e3:.4f} µs per visible block). "
             + ("" if not fa4_reasons else f"FA4 not timed: {'; '.join(fa4_reasons)}. ")
             + "Sums over the sparse layers:\n\n" + totals.reset_index().to_markdown(index=False, floatfmt=".4g")
             + "\n\nFit ms = a · blocks + b · tiles over every row below:\n\n" + "\n".join(fits))
    props = torch.cuda.get_device_properties(0)
    provenance = (f"GPU: {props.name}; torch {torch.__version__}; triton {triton.__version__}; Python "
                  f"{platform.python_version()}; date {datetime.date.today()}; command: {command()}; SmolLM2-135M-"
                  f"Instruct's masks at L={args.length} (default RRConfig, Shakespeare), Hq={hq}, Hkv={hkv}, D={d}, "
                  "bf16, [B, L, H, D] memory")
    print(notes)
    write_table(df, args.out, "bench_model_masks", "Attention kernels on a model's own block masks", provenance, notes)


if __name__ == "__main__":
    main()
