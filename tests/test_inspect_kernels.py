"""tools/inspect_kernels.py: the library's own launches compiled offline for Hopper, and the loops
and opcode counts read from their SASS."""

import json
import os
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], RZ ;
        /*0020*/                   MUFU.EX2 R3, R2 ;
        /*0030*/              @P0  FADD R4, R3, R4 ;
        /*0040*/              @!P1 BRA 0x20 ;
        /*0050*/                   FMUL R5, R4, R4 ;
        /*0060*/                   BRA 0x10 ;
        /*0070*/                   SHFL.BFLY PT, R6, R5, 0x1, 0x1f ;
        /*0080*/                   BRA 0x70 ;
        /*0090*/                   EXIT ;
        /*00a0*/                   BRA 0xa0 ;
"""


def test_loops_are_the_bodies_of_backward_branches_with_their_opcodes_counted():
    from inspect_kernels import loops

    found = loops(SASS)
    # the outer loop holds the product, so it comes first, then the others, shortest first; the
    # branch to itself after EXIT is no loop
    assert [(loop["from"], loop["to"], loop["instructions"]) for loop in found] == [
        ("0x10", "0x60", 6), ("0x70", "0x80", 2), ("0x20", "0x40", 3)]
    outer, shuffle, inner = found
    assert (outer["HGMMA"], outer["MUFU"], outer["FADD"], outer["FMUL"], outer["other"]) == (1, 1, 1, 1, 2)
    assert "HGMMA" not in inner and (inner["MUFU"], inner["FADD"], inner["other"]) == (1, 1, 1)  # predicate stripped
    assert (shuffle["SHFL"], shuffle["other"]) == (1, 1)


def test_the_estimators_kernels_compile_for_hopper_with_their_launch_config(tmp_path):
    # Compiled, not interpreted: the tool needs Triton's JIT functions, which the interpreter replaces.
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    command = [sys.executable, str(TOOLS / "inspect_kernels.py"), "estimate", "--length", "2048", "--q-heads", "4",
               "--kv-heads", "1", "--precision", "fast", "--config", json.dumps({"num_warps": 8}), "--out",
               str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "inspect_estimate_fast.json").read_text())
    assert "sm_90" in report["provenance"] and report["command"].endswith("--out " + str(tmp_path))
    means, estimator = report["kernels"]
    assert (means["kernel"], estimator["kernel"]) == ("_stride_means_kernel", "_estimate_kernel")
    assert estimator["num_warps"] == 8 and means["num_warps"] != 8  # the override reaches the estimator only
    assert 0 < estimator["registers"] <= 255 and estimator["shared_bytes"] > 0
    tile_loop = estimator["loops"][0]  # the loop over key tiles: products of q with the means, then exp2
    assert tile_loop["HGMMA"] > 0 and tile_loop["MUFU"] >= 128 * 128 // (8 * 32)
    assert (tmp_path / "inspect_estimate_fast.md").read_text().startswith("# Kernels of `estimate`")
