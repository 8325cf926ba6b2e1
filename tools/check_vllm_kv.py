"""GPU check of the vLLM plugin's CUDA-side pieces, without vLLM (which cannot be installed next to
the GPU machine's torch): the paged KV-cache read of ``rrattention.integrations.vllm.paged``
through synthetic block tables in vLLM's FlashAttention cache view, feeding the Triton kernels.

    python tools/check_vllm_kv.py --out results/vllm/h200
    python tools/check_vllm_kv.py --small          # small cases; also runs on the CPU (reference backend)

For each case (mixed batches of decodes, chunked-prefill continuations and fresh prompts up to
16K keys; GQA 32/8 D=128 and 9/3 D=64; bf16 and fp16; pages of 16 and 128 tokens; every physical
KV-cache layout vLLM has, as strides of the logical ``[num_blocks, Hkv, block_size, 2·D]`` view;
pages in random order):

* gather: the packed keys and values equal a token-by-token read of the pages (exactly);
* tau = 1: the prefill rows' outputs against fp32 dense causal attention over each sequence's keys
  (bottom-right): relative error ≤ 2× dense SDPA's in the same dtype; decode rows untouched;
* tau = 0.95: the same block masks and outputs as ``rr_attention_varlen`` on the gathered keys;
* tensor parallelism: ranks holding query-head slices (``head_start = rank · H_local``) and their
  KV heads' slice of the cache select, side by side, exactly the single-device masks;
* cost: the gather's time per layer next to the sparse prefill's, one 16K-key sequence.

Writes ``check_vllm_kv.txt`` (table and environment) under ``--out``; exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import subprocess
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention.integrations.vllm.paged import PagedRows, kv_pages  # noqa: E402
from rrattention.reference import dense_causal_attention  # noqa: E402

ORDERS = {"LBHNC": (0, 1, 2, 3), "LBNHC": (0, 2, 1, 3), "LHBNC": (1, 0, 2, 3), "BLHNC/BHLNC": (1, 2, 0, 3)}
CASES = [
    # (label, q heads, kv heads, D, block (page) size, rows as (Lq, Lk), decodes first)
    ("mixed 32/8 D128", 32, 8, 128, 16, [(1, 900), (1, 4000), (1500, 6000), (4096, 4096), (300, 300)]),
    ("mixed 9/3 D64", 9, 3, 64, 128, [(1, 129), (2048, 10000), (6000, 6000)]),
    ("long 32/8 D128", 32, 8, 128, 128, [(1, 16384), (4096, 16384), (8192, 8192)]),
]
SMALL_CASES = [
    ("small 4/2 D32", 4, 2, 32, 16, [(1, 90), (1, 40), (150, 300), (256, 256), (30, 30)]),
    ("small 6/3 D16", 6, 3, 16, 128, [(1, 129), (200, 400)]),
]
DEVICE = "cuda"


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref).norm() / ref.norm())


def make_cache(num_blocks, kv_heads, block_size, dim, order, dtype):
    shape = (num_blocks, kv_heads, block_size, 2 * dim)
    physical = torch.zeros([shape[i] for i in order], dtype=dtype, device=DEVICE)
    return physical.permute(*[order.index(i) for i in range(4)])


def make_batch(lengths, block_size, kv_heads, dim, order, dtype, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    pages_needed = [-(-lk // block_size) for _, lk in lengths]
    num_blocks = sum(pages_needed) + 7
    kv = make_cache(num_blocks, kv_heads, block_size, dim, order, dtype)
    perm = torch.randperm(num_blocks, device=DEVICE, generator=g)
    table = torch.full((len(lengths), max(pages_needed) + 3), -1, dtype=torch.int32, device=DEVICE)
    key_cache, value_cache = kv_pages(kv, dim)
    written, used = [], 0
    for r, ((_, lk), n) in enumerate(zip(lengths, pages_needed)):
        table[r, :n] = perm[used : used + n].int()
        used += n
        k = (torch.randn(lk, kv_heads, dim, device=DEVICE, generator=g) * 1.5).to(dtype)
        v = torch.randn(lk, kv_heads, dim, device=DEVICE, generator=g).to(dtype)
        pos = torch.arange(lk, device=DEVICE)
        pages = table[r, pos // block_size].long()
        key_cache[pages, pos % block_size] = k
        value_cache[pages, pos % block_size] = v
        written.append((k, v))
    starts = [0, *itertools.accumulate(lq for lq, _ in lengths)]
    return kv, table, starts, [lk for _, lk in lengths], written


def token_by_token(kv, table, seq_lens, block_size, dim, first, last):
    """The reference read: each key from its page, one row at a time (Python loop over rows)."""
    key_cache, value_cache = kv_pages(kv, dim)
    ks, vs = [], []
    for r in range(first, last):
        pos = torch.arange(seq_lens[r], device=DEVICE)
        pages = table[r, pos // block_size].long()
        ks.append(key_cache[pages, pos % block_size])
        vs.append(value_cache[pages, pos % block_size])
    return torch.cat(ks), torch.cat(vs)


def time_ms(fn, reps=10) -> float:
    fn()
    if DEVICE != "cuda":
        import time

        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) * 1000 / reps
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def check_case(label, hq, hkv, dim, block_size, lengths, order_name, dtype, seed, lines) -> bool:
    ok = True
    kv, table, starts, seq_lens, written = make_batch(lengths, block_size, hkv, dim, ORDERS[order_name], dtype, seed)
    first = sum(1 for lq, _ in lengths if lq == 1)  # decodes first, as the builder orders them
    last = len(lengths)
    rows = PagedRows.build(starts, seq_lens, table, block_size, first, last)
    scale = dim**-0.5

    k, v = rows.gather(kv, dim)
    want_k, want_v = token_by_token(kv, table, seq_lens, block_size, dim, first, last)
    gather_ok = torch.equal(k, want_k) and torch.equal(v, want_v)
    ok &= gather_ok

    g = torch.Generator(device=DEVICE).manual_seed(seed + 1)
    query = (torch.randn(starts[-1], hq, dim, device=DEVICE, generator=g) * 1.5).to(dtype)

    # tau = 1 against fp32 dense attention over every key of each sequence
    out = torch.full_like(query, float("nan"))
    cfg1 = rr.RRConfig(tau=1.0, min_sparse_len=0)
    plan, run = rows.attend(query, kv, out, cfg1, layer=0, scale=scale)
    untouched = bool(out[: starts[first]].isnan().all())
    worst, worst_sdpa = 0.0, 0.0
    for r in range(first, last):
        q = query[starts[r] : starts[r + 1]].transpose(0, 1)[None]
        kr, vr = (x.transpose(0, 1)[None] for x in written[r])
        ref = dense_causal_attention(q.float(), kr.float(), vr.float(), scale=scale)
        got = out[starts[r] : starts[r + 1]].transpose(0, 1)[None]
        sdpa = dense_causal_attention(q, kr, vr, scale=scale)
        worst = max(worst, rel_err(got, ref))
        worst_sdpa = max(worst_sdpa, rel_err(sdpa, ref))
    dense_ok = untouched and not bool(out[starts[first] :].isnan().any()) and worst <= max(2 * worst_sdpa, 1e-5)
    ok &= dense_ok

    # tau = 0.95 against the public packed function on the gathered keys
    cfg = rr.RRConfig(tau=0.95, min_sparse_len=0)
    out95 = torch.zeros_like(query)
    plan95, run95 = rows.attend(query, kv, out95, cfg, layer=3, scale=scale)
    stats = plan95.stats(run95)
    p = rows.packed
    want, want_stats = rr.rr_attention_varlen(query[rows.token_start : rows.token_end], want_k.contiguous(),
                                              want_v.contiguous(), p.cu_seqlens_q, p.cu_seqlens_k, p.max_seqlen_q,
                                              p.max_seqlen_k, cfg, layer=3, return_stats=True)
    same_masks = torch.equal(stats.block_mask, want_stats.block_mask)
    sparse_err = rel_err(out95[rows.token_start : rows.token_end], want.float())
    sparse_ok = same_masks and sparse_err < 1e-2 and bool(torch.isfinite(out95).all())
    ok &= sparse_ok

    # tensor parallelism: rank slices with their global head offsets
    tp_ok = True
    for tp in (2, 4) if hkv % 2 == 0 else (3,):
        if hq % tp or hkv % tp:
            continue
        masks = []
        for rank in range(tp):
            qs = slice(rank * hq // tp, (rank + 1) * hq // tp)
            kvs = slice(rank * hkv // tp, (rank + 1) * hkv // tp)
            rank_out = torch.zeros_like(query[:, qs])
            rank_rows = PagedRows.build(starts, seq_lens, table, block_size, first, last)
            rplan, rrun = rank_rows.attend(query[:, qs], kv[:, kvs], rank_out, cfg, layer=3, scale=scale,
                                           head_start=rank * hq // tp)
            masks.append(rplan.stats(rrun).block_mask)
        tp_ok &= torch.equal(torch.cat(masks, 1), stats.block_mask)
    ok &= tp_ok

    lines.append(f"| {label} | {order_name} | {str(dtype).split('.')[-1]} | {block_size} | "
                 f"{'ok' if gather_ok else 'FAIL'} | {worst:.2e} ({worst_sdpa:.2e}) {'ok' if dense_ok else 'FAIL'} | "
                 f"{'same' if same_masks else 'DIFFER'}, {sparse_err:.1e}, sparsity {stats.sparsity:.2f} "
                 f"{'ok' if sparse_ok else 'FAIL'} | {'ok' if tp_ok else 'FAIL'} |")
    return ok


def gather_cost(lines, small: bool) -> None:
    hq, hkv, dim, block_size, lk = (4, 2, 32, 16, 512) if small else (32, 8, 128, 128, 16384)
    dtype = torch.float32 if DEVICE == "cpu" else torch.bfloat16
    kv, table, starts, seq_lens, _ = make_batch([(lk, lk)], block_size, hkv, dim, ORDERS["LBHNC"], dtype, 9)
    rows = PagedRows.build(starts, seq_lens, table, block_size, 0, 1)
    query = torch.randn(lk, hq, dim, device=DEVICE, dtype=dtype)
    out = torch.empty_like(query)
    cfg = rr.RRConfig(tau=0.95, min_sparse_len=0)
    gather = time_ms(lambda: rows.gather(kv, dim))
    attend = time_ms(lambda: rows.attend(query, kv, out, cfg, layer=0, scale=dim**-0.5))
    lines.append("")
    lines.append(f"Gather cost, one {lk}-key prefill, {hq}/{hkv} heads, D={dim}, {str(dtype).split('.')[-1]}, "
                 f"{block_size}-token pages ({'CUDA events' if DEVICE == 'cuda' else 'wall clock'}, mean of 10 after a warm-up): gather {gather:.3f} ms per layer; the whole prefill call "
                 f"(gather + estimate + select + attention, tau=0.95) {attend:.3f} ms; gather share "
                 f"{gather / attend:.1%}.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for check_vllm_kv.txt")
    parser.add_argument("--small", action="store_true", help="small cases (a smoke test; runs on the CPU too)")
    args = parser.parse_args()
    global DEVICE
    if not torch.cuda.is_available():
        if not args.small:
            print("check_vllm_kv needs a CUDA GPU (or --small for the CPU smoke test)", file=sys.stderr)
            return 2
        DEVICE = "cpu"
    commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip() or "unknown"
    lines = [
        "# vLLM plugin: paged KV-cache read feeding the Triton kernels (tools/check_vllm_kv.py)",
        "",
        f"Command: `python {' '.join(sys.argv)}`; {torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU'}, torch {torch.__version__}, "
        f"triton {triton.__version__}, {datetime.date.today().isoformat()}, git {commit}; vLLM not installed.",
        "",
        "tau=1 column: worst relative error of the prefill rows vs fp32 dense attention over each sequence's keys "
        "(dense SDPA's in the same dtype in brackets; pass: <= 2x, or 1e-5). tau=0.95: block masks vs rr_attention_varlen "
        "on the gathered keys, output relative difference, sparsity. TP: simulated ranks' masks side by side == "
        "one device's.",
        "",
        "| case | cache layout | dtype | page | gather exact | tau=1 vs dense | tau=0.95 vs packed API | TP ranks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ok = True
    dtypes = (torch.float32, torch.float16) if DEVICE == "cpu" else (torch.bfloat16, torch.float16)
    for (label, hq, hkv, dim, block_size, lengths), (i, order_name), dtype in itertools.product(
            SMALL_CASES if args.small else CASES, enumerate(ORDERS), dtypes):
        if label.startswith("long") and (order_name != "LBHNC" or dtype != torch.bfloat16):
            continue  # the long case once: its point is the length
        ok &= check_case(label, hq, hkv, dim, block_size, lengths, order_name, dtype, seed=7 * i + len(label), lines=lines)
        print(lines[-1], flush=True)
    gather_cost(lines, args.small)
    lines.append("")
    lines.append(f"Result: {'PASS' if ok else 'FAIL'}")
    text = "\n".join(lines) + "\n"
    print("\n".join(lines[-3:]))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "check_vllm_kv.txt").write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
