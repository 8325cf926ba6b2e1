"""Tensor-parallel prefill on several GPUs: transformers' ``tp_plan="auto"`` with the rrattention hook.

    torchrun --nproc-per-node 2 tools/check_tp.py --out $OUT

A random-weight Llama-3.1-8B-shaped model (32 query / 8 KV heads of 128, bf16; ``--layers`` to
shorten it) is saved once by rank 0 (``--model-dir``, reused when present), then loaded by every
rank with ``tp_plan="auto"``. Three checks, one table (``check_tp.md`` under ``--out``):

* **masks, exact**: at ``--check-len`` tokens, the ranks' block masks of the captured layers
  (``CallRecord.block_mask``), side by side, equal ``rr_attention`` over the ranks' queries and
  keys gathered into one call (``head_start`` 0): the ranks select exactly one device's blocks
  for the same inputs;
* **masks, end to end**: rank 0 then loads the whole model on its GPU (TP=1) and runs the same
  prompt; the share of blocks on which every layer's TP=2 and TP=1 masks agree, and the largest
  difference of the last token's logits (bf16 matmuls of a shard may round differently from the
  whole matrix, so a block at the threshold may flip; the exact check above is the one that must hold);
* **time to first token** at ``--lengths``: one forward pass (``logits_to_keep=1``, no cache
  kept) at TP=n, SDPA vs rrattention at ``--tau``, median of ``--repeats`` after a warm-up: wall
  time on rank 0 between barriers, the GPU synchronised, with rrattention's sparsity (mean over layers).

Random weights give near-uniform attention, so rrattention keeps many blocks at a given τ: the
sparsity is printed beside each time. Every rank must see the GPUs (``LOCAL_RANK`` picks one).
Without a GPU it runs over gloo on the CPU (``--shape tiny --check-len 512 --lengths 512``: a smoke
test of the script itself, host-timed).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention.integrations import hf  # noqa: E402

CAPTURE = "rrattention_check_tp"
LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rope_theta=500000.0,
                rms_norm_eps=1e-5)
SHAPES = {"llama-3.1-8b": LLAMA_8B,
          "tiny": dict(LLAMA_8B, vocab_size=256, hidden_size=128, intermediate_size=256, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=16)}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_model(model_dir: Path, layers: int, shape: dict, dtype: torch.dtype) -> None:
    """Random weights in the shape's sizes, saved (rank 0, once)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (model_dir / "config.json").exists():
        return
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **shape)).to(dtype)
    model.save_pretrained(model_dir)
    del model


def register_capture(store: dict, layers: set[int]) -> None:
    """An attention function that keeps the queries and keys of ``layers``, then runs the hook."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    def capture(module, query, key, value, attention_mask, **kwargs):
        if module.layer_idx in layers:
            store[module.layer_idx] = (query.detach(), key.detach())
        return hf.attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(CAPTURE, capture)
    AttentionMaskInterface.register(CAPTURE, hf.causal_or_sdpa_mask)


def prefill(model, ids, masks: bool = False):
    """``(last-token logits, stats)`` of one forward pass."""
    with torch.no_grad(), rr.hf.collect_stats(model, block_masks=masks) as stats:
        logits = model(ids, logits_to_keep=1, use_cache=False).logits[:, -1].float()
    return logits, stats


def gather(tensor: torch.Tensor, world: int) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape on each), on the device; bool travels as uint8."""
    sent = tensor.to(DEVICE, torch.uint8 if tensor.dtype == torch.bool else tensor.dtype).contiguous()
    parts = [torch.empty_like(sent) for _ in range(world)]
    dist.all_gather(parts, sent)
    return [p.bool() for p in parts] if tensor.dtype == torch.bool else parts


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def ttft(model, ids, repeats: int, rank: int) -> float:
    """Median wall time of one prefill pass (ms) between barriers, every rank running it."""
    times = []
    with torch.no_grad():
        model(ids, logits_to_keep=1, use_cache=False)  # warm-up: kernels compiled, allocator grown
        for _ in range(repeats):
            dist.barrier()
            synchronize()
            start = time.perf_counter()
            model(ids, logits_to_keep=1, use_cache=False)
            synchronize()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "results/multigpu")))
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/rr_llama8b_random"))
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    parser.add_argument("--check-len", type=int, default=32768)
    parser.add_argument("--capture-layers", default="0,1,31")
    parser.add_argument("--lengths", default="32768,65536,131072")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tau", type=float, default=0.9)
    parser.add_argument("--min-sparse-len", type=int, default=None, help="default: RRConfig's (the measured crossover)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, DistributedConfig

    local = int(os.environ.get("LOCAL_RANK", 0))
    shape = SHAPES[args.shape]
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    if DEVICE == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        make_model(args.model_dir, args.layers, shape, dtype)
    dist.barrier()

    layers = {int(x) for x in args.capture_layers.split(",") if int(x) < args.layers}
    store: dict = {}
    register_capture(store, layers)
    cfg = rr.RRConfig(tau=args.tau, **({} if args.min_sparse_len is None else {"min_sparse_len": args.min_sparse_len}))
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, distributed_config=DistributedConfig(tp_plan="auto"),
                                                 dtype=dtype, attn_implementation=CAPTURE).eval()
    rr.hf.configure(model, cfg)
    model.set_attn_implementation(CAPTURE)
    tp_rank = rr.hf.tensor_parallel_rank(rr.hf.attention_modules(model)[0])
    assert tp_rank == (rank, world), f"rank {rank}: the hook read {tp_rank} from the TP mesh"
    ids = torch.randint(0, shape["vocab_size"], (1, args.check_len), generator=torch.Generator().manual_seed(1))
    ids = ids.to(DEVICE)

    lines = []
    tp_logits, stats = prefill(model, ids, masks=True)
    records = {r.layer: r for r in stats.prefill_records()}
    exact = []
    for layer in sorted(layers):
        q, k = store[layer]
        qs, ks = gather(q, world), gather(k, world)
        rank_masks = gather(records[layer].block_mask, world)
        starts = gather(torch.tensor([records[layer].head_start]), world)
        if rank == 0:
            q_all, k_all = torch.cat(qs, 1), torch.cat(ks, 1)
            _, one = rr.rr_attention(q_all, k_all, k_all, cfg, layer=layer, return_stats=True)
            equal = torch.equal(torch.cat(rank_masks, 1), one.block_mask.to(DEVICE))
            exact.append(equal)
            lines.append(f"| {layer} | {[int(s) for s in starts]} | {equal} | {one.sparsity:.3f} |")
    store.clear()
    per_rank = {r.layer: r.block_mask for r in stats.prefill_records()}
    gathered = {layer: torch.cat(gather(mask, world), 1) for layer, mask in sorted(per_rank.items())}
    del stats, records

    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        x = torch.randint(0, shape["vocab_size"], (1, length), generator=torch.Generator().manual_seed(2)).to(DEVICE)
        row = {"length": length}
        for name in ("sdpa", "rrattention"):
            if name == "sdpa":
                model.set_attn_implementation("sdpa")
            else:
                rr.hf.configure(model, cfg)
            row[name] = ttft(model, x, args.repeats, rank)
        _, run = prefill(model, x)
        row["sparsity"] = run.sparsity()
        rows.append(row)
        del x

    if rank == 0:
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        whole = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype, device_map=f"{DEVICE}:{local}"
                                                     if DEVICE == "cuda" else None,
                                                     attn_implementation=hf.ATTN_IMPLEMENTATION).eval()
        rr.hf.configure(whole, cfg)
        one_logits, one_stats = prefill(whole, ids, masks=True)
        agree, total = 0, 0
        layer_equal = 0
        for r in one_stats.prefill_records():
            tp_mask = gathered[r.layer].cpu()
            agree += int((tp_mask == r.block_mask).sum())
            total += r.block_mask.numel()
            layer_equal += int(torch.equal(tp_mask, r.block_mask))
        end_to_end = (agree / total, layer_equal, len(gathered), float((tp_logits - one_logits).abs().max()))
    dist.barrier()
    if rank != 0:
        dist.destroy_process_group()
        return

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    import transformers
    import triton

    text = [f"# Tensor-parallel prefill, TP={world}",
            "",
            f"device: {world}x {torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU (gloo)'}; torch {torch.__version__}; triton {triton.__version__}; "
            f"transformers {transformers.__version__}; git {commit}; date {datetime.date.today()}; command: torchrun "
            f"--nproc-per-node {world} {' '.join(map(shlex.quote, sys.argv))}; random weights, {args.shape} shapes, "
            f"{args.layers} layers, {str(dtype).removeprefix('torch.')}; RRConfig(tau={cfg.tau}, "
            f"min_sparse_len={cfg.min_sparse_len}), other settings default.",
            "",
            f"## Masks at {args.check_len} tokens: ranks' masks vs one call over their gathered queries and keys",
            "",
            "| layer | ranks' head_start | masks equal | sparsity |", "|---|---|---|---|", *lines,
            "",
            f"All equal: {all(exact)}.",
            "",
            f"## End to end vs TP=1 at {args.check_len} tokens",
            "",
            f"Blocks on which TP={world} and TP=1 agree: {end_to_end[0]:.6f}; layers with identical masks: "
            f"{end_to_end[1]} of {end_to_end[2]}; largest last-token logit difference: {end_to_end[3]:.4g}.",
            "",
            f"## Time to first token at TP={world} (ms, median of {args.repeats})",
            "",
            "| tokens | SDPA | rrattention | speed-up | sparsity |", "|---|---|---|---|---|",
            *[f"| {r['length']} | {r['sdpa']:.1f} | {r['rrattention']:.1f} | {r['sdpa'] / r['rrattention']:.2f} | "
              f"{r['sparsity']:.3f} |" for r in rows]]
    (args.out / "check_tp.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
