"""GPU check: a full SmolLM2 prefill through the backend captured in a CUDA graph, and under torch.compile.

    python tools/check_capture.py --out results/kernels/h200/check_capture.txt

SmolLM2-135M-Instruct (the offline asset if it is there, else a random-weight model of the same
shape, said in the report), bf16, on Shakespeare (or random tokens), ``RRConfig(min_sparse_len=0)``
so every prefill call takes the sparse path:

* torch.compile: ``torch.compile(model, fullgraph=True)`` with inductor must compile with no graph
  break (the attention is one custom-op node) and give logits as close to the fp32 model's as the
  eager bf16 forward's (relative error ≤ 2×);
* CUDA graphs: ``torch.compile(model, mode="reduce-overhead", fullgraph=True)`` replays the whole
  prefill as CUDA graphs (no host synchronisation inside); its logits must equal the compiled
  forward's (or be as close to fp32). A raw ``torch.cuda.graph`` capture of the eager forward is
  reported for information: some transformers versions read tensors on the host in their forward.
Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import traceback
import warnings
from pathlib import Path

import torch
import transformers
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rrattention as rr  # noqa: E402
from rrattention import assets  # noqa: E402


def load(length: int, dtype: torch.dtype = torch.bfloat16):
    cached = [assets.cache_dir() / name for name in ("SmolLM2-135M-Instruct.Q4_1.gguf", "shakespeare.txt")]
    if all(path.exists() for path in cached):  # never download here: GPU machines may have no network
        tokenizer, model = assets.load_smollm2(device="cuda", dtype=dtype)
        tokens = tokenizer(assets.corpus("shakespeare")[: 6 * length], return_tensors="pt").input_ids[0]
        return model, tokens[:length][None].cuda(), "SmolLM2-135M-Instruct (real weights), Shakespeare"
    else:
        import transformers

        print(f"no offline assets in {assets.cache_dir()}; using a random-weight model of SmolLM2's shape")
        config = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                          num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                          rope_theta=1e5, tie_word_embeddings=True)
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config).to("cuda", dtype).eval()
        ids = torch.randint(0, 49152, (1, length), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
        return model, ids, "random-weight model of SmolLM2's shape, random tokens"


def failure(err: Exception) -> str:
    """The error and the last frames of its traceback (where in our code or torch's it happened)."""
    frames = traceback.extract_tb(err.__traceback__)[-4:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300]} [at {where}]"


def rel_err(x, ref) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm())


def capture_diagnostics(model, ids, report) -> None:
    """Which part does not capture: the model with SDPA alone, and the attention op alone."""
    torch.cuda.synchronize()
    torch._dynamo.reset()
    model.set_attn_implementation("sdpa")
    try:
        graphed = torch.compile(model, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):
            graphed(ids, use_cache=False, logits_to_keep=256)
        report("info: the same model with SDPA attention replays under reduce-overhead")
    except Exception as err:
        report(f"info: the same model with SDPA attention fails under reduce-overhead too: {failure(err)}")
    torch._dynamo.reset()
    rr.hf.configure(model, rr.RRConfig(min_sparse_len=0))
    attn = rr.hf.attention_modules(model)[0]
    heads, kv_heads, dim = model.config.num_attention_heads, model.config.num_key_value_heads, attn.head_dim
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, ids.shape[1], heads, dim, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2)
    k, v = (torch.randn(1, kv_heads, ids.shape[1], dim, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2))
    from rrattention.integrations import _calls

    state = _calls.module_state(attn)
    op = lambda q, k, v: torch.ops.rrattention.attention(q, k, v, None, state.config_json, 3, dim**-0.5, "", 0)  # noqa: E731
    try:
        want = op(q, k, v)
        graphed_op = torch.compile(op, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):
            got = graphed_op(q, k, v).clone()
        report(f"info: the attention op alone replays under reduce-overhead, output identical {torch.equal(got, want)}")
    except Exception as err:
        report(f"info: the attention op alone fails under reduce-overhead: {failure(err)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("")

    def report(line):  # written as it goes: a run that dies (a failed capture can) keeps what it found
        print(line, flush=True)
        if args.out is not None:
            with open(args.out, "a") as fh:
                fh.write(line + "\n")

    model, ids, what = load(args.length)
    props = torch.cuda.get_device_properties(0)
    report(f"check_capture on {props.name}; torch {torch.__version__}; triton {triton.__version__}; "
           f"{datetime.date.today()}; command: python tools/check_capture.py {' '.join(sys.argv[1:])}; {what}; L={args.length}")
    rr.hf.configure(model, rr.RRConfig(min_sparse_len=0))
    ok = True
    with torch.no_grad():
        with rr.hf.collect_stats(model) as stats:
            eager = model(ids, use_cache=False, logits_to_keep=256).logits
        report(f"eager: {len(stats.records)} attention calls, sparsity {stats.sparsity():.3f}, "
               f"backends {stats.records[0].backends}")

        # transformers' own forward reads tensors on the host in some versions (5.17: its packed-sequence
        # detection), which no raw capture survives; torch.compile traces those reads away, and its
        # "reduce-overhead" mode replays the compiled forward as CUDA graphs.
        # Where the eager forward synchronises with the host (what a raw capture cannot contain).
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                model(ids, use_cache=False, logits_to_keep=256)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)})
        report(f"info: host synchronisations in one eager forward: {', '.join(syncs) if syncs else 'none'}")

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):
                model(ids, use_cache=False, logits_to_keep=256)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = model(ids, use_cache=False, logits_to_keep=256).logits
            graph.replay()
            torch.cuda.synchronize()
            report(f"info: raw capture of the eager forward: replayed logits identical {torch.equal(captured, eager)}")
            del graph, captured
        except Exception as err:  # not a failure of the backend: see the comment above
            torch.cuda.synchronize()
            report(f"info: raw capture of the eager forward failed (transformers {transformers.__version__}): "
                   f"{failure(err)}")

        reference = load(args.length, torch.float32)[0](ids, use_cache=False, logits_to_keep=256).logits  # fp32 copy
        err_eager = rel_err(eager, reference)
        got = None
        try:
            compiled = torch.compile(model, fullgraph=True)
            got = compiled(ids, use_cache=False, logits_to_keep=256).logits
            err_compiled = rel_err(got, reference)
            good = err_compiled <= 2 * err_eager
            report(f"{'PASS' if good else 'FAIL'} torch.compile(fullgraph=True, inductor): no graph break; logits rel err "
                   f"vs the fp32 model {err_compiled:.2e} (eager bf16 {err_eager:.2e})")
        except Exception as err:  # a graph break under fullgraph=True, or a compile failure
            good = False
            report(f"FAIL torch.compile(fullgraph=True): {failure(err)}")
        torch._dynamo.reset()
        try:
            graphed = torch.compile(model, mode="reduce-overhead", fullgraph=True)
            for _ in range(3):  # warm-up, record, replay
                replayed = graphed(ids, use_cache=False, logits_to_keep=256).logits.clone()
            same = got is not None and torch.equal(replayed, got)
            err_replay = rel_err(replayed, reference)
            good_replay = same or err_replay <= 2 * err_eager
            report(f"{'PASS' if good_replay else 'FAIL'} torch.compile(mode='reduce-overhead'): the whole prefill replayed "
                   f"as CUDA graphs; logits identical to the compiled forward {same} (rel err vs fp32 {err_replay:.2e})")
        except Exception as err:  # a capture failure
            good_replay = False
            report(f"FAIL torch.compile(mode='reduce-overhead'): {failure(err)}")
            try:
                capture_diagnostics(model, ids, report)
            except Exception as diag_err:  # a failed capture can leave the device unusable
                report(f"info: the diagnostics stopped: {failure(diag_err)}")
        good &= good_replay
        ok &= good
    report("ALL PASS" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
