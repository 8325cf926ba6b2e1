"""The Triton kernels one library call launches, compiled for a GPU architecture on any machine (no
GPU needed: Triton's own ptxas and cuobjdump), with their register, spill and shared-memory budget
and the instruction mix of each loop: what a kernel variant costs per tile, before GPU time is
spent on timing it.

    python tools/inspect_kernels.py estimate --length 32768 --precision exact
    python tools/inspect_kernels.py attention --length 32768 --tma --out results/kernels/sm90-static

Per compiled kernel: registers per thread, stack bytes per thread (local memory: spilled registers),
shared memory, and for each loop of its SASS (the body between a backward branch and its target)
the instruction count and the opcode families by count, the loops holding matrix products
first, innermost first. A loop is counted statically: the two sides of a branch inside it (the
causal tile's mask, say) are both counted, once. The kernels are the library's own launches,
bound and specialised by Triton's own binder as a launch on the target GPU would be (integer
arguments on their divisibility by 16, tensors on their alignment); nothing runs. The GPU
machine's Triton can be inspected from here: ``pip install --target DIR triton==3.6.0`` and put
``DIR`` first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rrattention.kernels._common import cdiv  # noqa: E402
from rrattention.kernels.block_sparse_attention import block_sparse_attention  # noqa: E402
from rrattention.kernels.estimate import estimate_block_scores  # noqa: E402
from rrattention.kernels.select import select_blocks  # noqa: E402

# Opcode families reported on their own; the rest are summed as "other".
FAMILIES = ("HGMMA", "HMMA", "MUFU", "FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "FSETP", "SHFL", "LDG", "LDGSTS",
            "UTMALDG", "LDS", "LDSM", "STS", "STG", "LDL", "STL", "BAR", "SYNCS", "ISETP", "IMAD", "IADD3", "LEA", "LOP3")


class OfflineCompiler:
    """Stands in for a plan's launch cache (``rrattention.kernels._launch.Launches``): each launch is
    bound, specialised and compiled for ``arch`` the way Triton's JIT would on that GPU, and kept."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)
        self.backend = make_backend(self.target)
        self.kernels: list[tuple[str, object]] = []  # (name, CompiledKernel)

    def __call__(self, kernel, grid, tensors, scalars, constexprs) -> None:
        if not hasattr(kernel, "_pack_args"):  # Triton's binder internals, read in 3.6 and 3.9
            raise SystemExit(f"{kernel!r} is no JIT function Triton {triton.__version__} can bind offline here: "
                             "unset TRITON_INTERPRET (the interpreter replaces the JIT), or use Triton 3.6-3.9")
        binder = create_function_from_signature(kernel.signature, kernel.params, self.backend)
        bound, specialization, options = binder(*tensors, *scalars, **constexprs)
        options, signature, constants, attrs = kernel._pack_args(self.backend, constexprs, bound, specialization,
                                                                 options)
        compiled = triton.compile(ASTSource(kernel, signature, constants, attrs), target=self.target,
                                  options=options.__dict__)
        self.kernels.append((kernel.fn.__name__, compiled))


def _cuobjdump(cubin: bytes, *flags: str) -> list[str]:
    """cuobjdump's output for each of ``flags``, the cubin written once."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return [subprocess.run([triton.knobs.nvidia.cuobjdump.path, flag, f.name], check=True, capture_output=True,
                               text=True).stdout for flag in flags]


def resources(usage: str) -> dict:
    """``{"registers", "stack_bytes", "local_bytes"}`` per thread, from cuobjdump's resource usage."""
    found = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", usage))
    return {"registers": int(found["REG"]), "stack_bytes": int(found["STACK"]), "local_bytes": int(found["LOCAL"])}


def loops(sass: str) -> list[dict]:
    """Each loop of ``sass`` (cuobjdump -sass text): its address range, instruction count and opcode
    families; the loops holding matrix products first, innermost (shortest) first."""
    instructions = [(int(a, 16), text.strip())
                    for a, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    index = {address: i for i, (address, _) in enumerate(instructions)}
    found = []
    for end, (address, text) in enumerate(instructions):
        branch = re.search(r"\bBRA\b[^;]*?(0x[0-9a-f]+)", text)
        target = int(branch.group(1), 16) if branch else None
        # a branch to itself is the trap after the kernel's exit, not a loop
        if target is None or target >= address or target not in index:
            continue
        start = index[target]
        opcodes = collections.Counter()
        for _, body in instructions[start:end + 1]:
            opcode = re.sub(r"^@!?U?P[T0-9]+\s+", "", body).split()[0].split(".")[0]
            opcodes[opcode if opcode in FAMILIES else "other"] += 1
        found.append({"from": f"{instructions[start][0]:#x}", "to": f"{address:#x}", "instructions": end + 1 - start,
                      **{name: opcodes[name] for name in (*FAMILIES, "other") if opcodes[name]}})
    return sorted(found, key=lambda loop: (loop.get("HGMMA", 0) + loop.get("HMMA", 0) == 0, loop["instructions"]))


def kernel_report(compiled) -> dict:
    usage, sass = _cuobjdump(compiled.asm["cubin"], "--dump-resource-usage", "-sass")
    return {"shared_bytes": compiled.metadata.shared, "num_warps": compiled.metadata.num_warps,
            "num_stages": compiled.metadata.num_stages, **resources(usage), "loops": loops(sass)}


def _loop_table(found: list[dict]) -> str:
    if not found:
        return "no loops"
    table = pd.DataFrame(found).fillna(0)
    counts = [name for name in (*FAMILIES, "other") if name in table]
    return table[["from", "to", "instructions", *counts]].astype({name: int for name in counts}).to_markdown(index=False)


def launch_call(args, compiler: OfflineCompiler) -> None:
    """Run the host side of one library call with ``compiler`` as its launch cache: CPU tensors, left
    uninitialised (the kernels are compiled, not run)."""
    dtype = getattr(torch, args.dtype)
    L, D = args.length, args.head_dim
    q = torch.empty(1, args.q_heads, L, D, dtype=dtype)
    k, v = (torch.empty(1, args.kv_heads, L, D, dtype=dtype) for _ in range(2))
    scale = D**-0.5
    n_blocks = cdiv(L, args.block)
    config = json.loads(args.config) if args.config else None
    if args.call == "estimate":
        estimate_block_scores(q, k, stride=args.stride, block_size=args.block, head_shift="round_robin", scale=scale,
                              precision=args.precision, config=config, launches=compiler, tma=args.tma)
    elif args.call == "select":
        scores = torch.empty(1, args.q_heads, n_blocks, n_blocks)
        select_blocks(scores, q_len=L, k_len=L, block_size=args.block, tau=0.95, selector="top_tau", force_sink=True,
                      force_diagonal=True, dense_last_query_block=True, launches=compiler)
    else:
        kv_count = torch.arange(1, n_blocks + 1, dtype=torch.int32).expand(1, args.q_heads, n_blocks)
        kv_index = torch.arange(n_blocks, dtype=torch.int32).expand(1, args.q_heads, n_blocks, n_blocks)
        block_sparse_attention(q, k, v, kv_count, kv_index, block_size=args.block, scale=scale, config=config,
                               launches=compiler, tma=args.tma)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("call", choices=("estimate", "select", "attention"))
    ap.add_argument("--arch", type=int, default=90, help="compute capability ×10 (90: Hopper)")
    ap.add_argument("--length", type=int, default=32768)
    ap.add_argument("--q-heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--precision", choices=("exact", "fast"), default="exact", help="estimate: the estimator's mode")
    ap.add_argument("--tma", action="store_true",
                    help="attention: K and V through tensor descriptors; estimate: the stride means through them")
    ap.add_argument("--config", default="", metavar="JSON", help="estimate, attention: launch-config overrides")
    ap.add_argument("--out", type=Path, default=None, help="write inspect_<call>.md and .json there")
    args = ap.parse_args()

    compiler = OfflineCompiler(args.arch)
    launch_call(args, compiler)
    command = "python tools/inspect_kernels.py " + " ".join(sys.argv[1:])
    provenance = (f"{command}\n\ntarget sm_{args.arch} (compiled offline, nothing run); triton {triton.__version__}; "
                  f"torch {torch.__version__}; {datetime.date.today()}")
    reports, sections = [], [f"# Kernels of `{args.call}`, compiled for sm_{args.arch}\n", provenance]
    for name, compiled in compiler.kernels:
        report = {"kernel": name, **kernel_report(compiled)}
        reports.append(report)
        budget = {key: report[key] for key in ("num_warps", "num_stages", "registers", "stack_bytes", "local_bytes",
                                              "shared_bytes")}
        sections += [f"\n## {name}\n", pd.DataFrame([budget]).to_markdown(index=False), "",
                     _loop_table(report["loops"])]
    text = "\n".join(sections)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"inspect_{args.call}_{args.precision}" if args.call == "estimate" else f"inspect_{args.call}"
        (args.out / f"{stem}.md").write_text(text + "\n")
        (args.out / f"{stem}.json").write_text(json.dumps({"command": command, "provenance": provenance,
                                                           "kernels": reports}, indent=1) + "\n")


if __name__ == "__main__":
    main()
