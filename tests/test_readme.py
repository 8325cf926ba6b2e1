"""The README's Python examples run as written."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run(monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["packed"].shape == (4096, 8, 64)


def test_config_files_load():
    import rrattention as rr

    default = rr.RRConfig.from_yaml(ROOT / "configs/rrattention.yaml", key="rrattention")
    assert default == rr.RRConfig()
    assert rr.RRConfig.from_yaml(ROOT / "configs/rrattention_aggressive.yaml", key="rrattention").tau == 0.9
