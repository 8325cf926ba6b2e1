"""The README's vLLM settings are valid settings (the engine itself is exercised in test_engine.py)."""

import ast
import json
import re
from pathlib import Path

from rrattention.integrations.vllm.settings import VllmSettings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SECTION = README[README.index("## In vLLM"):README.index("## Backends and speed")]


def test_the_command_line_settings_parse():
    (cli,) = re.findall(r"--additional-config '(.*?)'", SECTION)
    settings = VllmSettings.from_additional_config(json.loads(cli))
    assert settings.cfg.tau == 0.95 and settings.cfg.is_dense_layer(0) and settings.stats_file


def test_the_offline_settings_parse():
    (literal,) = re.findall(r"additional_config=(\{.*?\}\}\}?)\)", SECTION, flags=re.S)
    settings = VllmSettings.from_additional_config(ast.literal_eval(literal))
    assert settings.cfg.layer_config(1).tau == 0.9
