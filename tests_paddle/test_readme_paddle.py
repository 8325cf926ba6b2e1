"""The README's Paddle example runs as written."""

import re
from pathlib import Path

import paddle
import paddleformers  # noqa: F401  (first: it hides the torchcodec shim of paddlecodec, which breaks transformers' imports)
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_readme_paddle_example_runs(tmp_path):
    import transformers

    (block,) = [b for b in re.findall(r"```py\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S) if "rrattention.paddle" in b]
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)  # HF weights, as the example loads them
    (tmp_path / "config.json").write_text((tmp_path / "config.json").read_text().replace("{", '{"fuse_rms_norm": false,', 1))
    namespace = {"path": str(tmp_path), "input_ids": paddle.randint(0, 64, [1, 40])}
    exec(compile(block, "README.md", "exec"), namespace)
    assert isinstance(namespace["out"], tuple) and list(namespace["out"][0].shape) == [1, 8]
    assert len(namespace["stats"].records) == 2 * 8  # two layers per step: one prefill, seven decodes
    assert namespace["stats"].records[0].q_len == 40 and namespace["stats"].records[-1].q_len == 1
