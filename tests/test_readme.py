"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _blocks():
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_api_examples_run(monkeypatch):
    blocks = [b for b in _blocks() if "rr.hf" not in b and "assets" not in b]
    assert len(blocks) >= 2
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["packed"].shape == (4096, 8, 64)


def test_readme_transformers_examples_run(tmp_path):
    transformers = pytest.importorskip("transformers")
    from rrattention import assets

    hf_block, assets_block = (b for b in _blocks() if "rr.hf" in b or "assets" in b)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    namespace = {"path": str(tmp_path), "inputs": {"input_ids": torch.randint(0, 64, (1, 40))}}
    exec(compile(hf_block, "README.md", "exec"), namespace)
    new_tokens = namespace["out"].shape[1] - 40  # generation may stop early at an end-of-sequence token
    assert 1 <= new_tokens <= 32 and len(namespace["stats"].records) == 2 * new_tokens  # 2 layers per step
    try:
        assets.smollm2_gguf()
    except assets.AssetUnavailable as err:
        pytest.skip(f"offline assets unavailable: {err}")
    exec(compile(assets_block, "README.md", "exec"), namespace)
    assert type(namespace["model"].model.layers[0].self_attn).__name__ == "LlamaAttention"
    assert "ROMEO" in namespace["text"]


def test_config_files_load():
    import rrattention as rr

    default = rr.RRConfig.from_yaml(ROOT / "configs/rrattention.yaml", key="rrattention")
    assert default == rr.RRConfig()
    assert rr.RRConfig.from_yaml(ROOT / "configs/rrattention_aggressive.yaml", key="rrattention").tau == 0.9
