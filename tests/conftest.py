import os

import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter, which must be chosen before
# any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.helpers import DEVICES  # noqa: E402

# One intra-op thread per test process: the suite runs under pytest-xdist on small tensors.
torch.set_num_threads(int(os.environ.get("RR_TEST_THREADS", "1")))

settings.register_profile(
    "default",
    deadline=None,
    max_examples=int(os.environ.get("RR_HYPOTHESIS_EXAMPLES", "100")),
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.load_profile("default")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


class ByteTokenizer:
    """Bytes as tokens: enough for the tasks, no download."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=True, return_tensors=None):
        ids = list(text.encode("utf-8"))
        return type("Encoding", (), {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids})()

    def decode(self, ids, skip_special_tokens=True):
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def _corpus():
    rng = np.random.default_rng(0)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
             "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform"]
    return " ".join(rng.choice(words, size=40_000))


@pytest.fixture(scope="module")
def context():
    """A tiny random Llama with a byte tokenizer in an evaluation ModelContext (no download)."""
    transformers = pytest.importorskip("transformers")
    from experiments.base import ModelContext

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    model = transformers.LlamaForCausalLM(config).eval()
    return ModelContext(model, ByteTokenizer(), torch.device("cpu"), _corpus)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama and a word-level tokenizer saved as a local HF model directory, and a cache
    whose Shakespeare corpus is made of the tokenizer's words (no download)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = tmp_path_factory.mktemp("tiny")
    text = _corpus()
    words = sorted(set(text.split()))
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<unk>").save_pretrained(root / "model")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    transformers.LlamaForCausalLM(config).save_pretrained(root / "model")
    (root / "cache").mkdir()
    (root / "cache" / "shakespeare.txt").write_text(text)
    return root
