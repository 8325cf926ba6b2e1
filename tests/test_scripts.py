"""The GPU-only scripts (benchmarks, checks) cannot run here, but each must at least parse: a
syntax error would otherwise first show on the GPU machine, after its setup has been paid for."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for folder in ("tools", "experiments") for p in (ROOT / folder).rglob("*.py"))


def test_there_are_scripts_to_check():
    assert any(p.name == "bench_kernels.py" for p in SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_parses(path):
    compile(path.read_text(), str(path), "exec")
