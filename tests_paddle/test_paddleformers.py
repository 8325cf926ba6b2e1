"""The PaddleFormers attention hook: tiny random Llama / Qwen2 / Qwen3 models and SmolLM2 converted
from its HF weights (convert_from_hf), against PaddleFormers' own SDPA."""

import paddle
import pytest
import torch

import rrattention as rr
from rrattention.integrations import paddleformers as rr_pf

transformers_pf = pytest.importorskip("paddleformers.transformers")

FULL = rr.RRConfig(block_size=64, stride=8, tau=1.0, min_sparse_len=0)  # keeps every block that has mass
SPARSE = rr.RRConfig(block_size=64, stride=8, tau=0.3, min_sparse_len=0)


FAMILIES = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "ernie4_5": "Ernie4_5"}


def _tiny(family):
    prefix = FAMILIES[family]
    paddle.seed(0)
    try:
        config_cls, model_cls = getattr(transformers_pf, f"{prefix}Config"), getattr(transformers_pf, f"{prefix}ForCausalLM")
    except ImportError as err:  # PaddleFormers 1.2's Qwen models import paddlefleet, which PyPI does not have
        pytest.skip(f"PaddleFormers cannot build {prefix} here: {err}")
    config = config_cls(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, fuse_rms_norm=False)
    return model_cls(config).eval()


def _sdpa(model):
    return rr_pf.use_sdpa(model)


def _logits(model, ids, **kwargs):
    with paddle.no_grad():
        return torch.from_dlpack(model(ids, **kwargs)[0]).clone()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hook_at_tau_one_equals_sdpa(family):
    model = _tiny(family)
    ids = paddle.randint(0, 128, [2, 300])
    want = _logits(_sdpa(model), ids)
    rr_pf.configure(model, FULL)
    with rr_pf.collect_stats(model) as stats:
        got = _logits(model, ids)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    assert len(stats.records) == 2 and stats.records[0].backends["attention"] == "reference"
    rr_pf.configure(model, SPARSE)
    with rr_pf.collect_stats(model) as stats:
        sparse = _logits(model, ids)
    assert stats.sparsity() > 0 and not torch.allclose(sparse, want, atol=1e-3)


def test_padding_is_packed_away():
    model = _tiny("llama")
    ids = paddle.randint(0, 128, [2, 300])
    mask = paddle.ones([2, 300], dtype="int64")
    mask[0, :37] = 0  # left padding
    want = _logits(_sdpa(model), ids, attention_mask=mask)
    rr_pf.configure(model, FULL)
    with rr_pf.collect_stats(model) as stats:
        got = _logits(model, ids, attention_mask=mask)
    torch.testing.assert_close(got[0, 37:], want[0, 37:], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(got[1], want[1], atol=2e-5, rtol=2e-5)
    assert stats.records[0].dense_reasons == (None, None)  # both rows ran the sparse path, packed
    # the unpadded row alone gives the same logits: padding does not influence selection
    rr_pf.configure(model, SPARSE)
    alone = _logits(model, ids[1:])
    torch.testing.assert_close(_logits(model, ids, attention_mask=mask)[1], alone[0], atol=2e-5, rtol=2e-5)


def test_prefill_sparse_decode_dense_and_layer_settings():
    model = _tiny("llama")
    ids = paddle.randint(0, 128, [1, 260])
    rr_pf.configure(model, rr.RRConfig(block_size=64, stride=8, tau=0.3, min_sparse_len=0, dense_layers=[1]))
    with rr_pf.collect_stats(model) as stats, paddle.no_grad():
        model.generate(ids, max_new_tokens=3, decode_strategy="greedy_search")
    prefill = [r for r in stats.records if r.q_len > 1]
    decode = [r for r in stats.records if r.q_len == 1]
    assert [(r.layer, r.k_len) for r in prefill] == [(0, 260), (1, 260)] and len(decode) == 4
    assert prefill[0].sparsity > 0 and prefill[1].sparsity == 0 and prefill[1].dense_reasons[0] is not None
    assert all(r.sparsity == 0 and r.dense_reasons[0] is not None for r in decode)


def test_dense_calls_of_a_known_layout_go_straight_to_sdpa(monkeypatch):
    """After one layer's call of a layout ran dense, the other layers' calls of it run PaddleFormers'
    SDPA at once; a collector or a layer with its own setting still takes the full path."""
    model = _tiny("llama")
    ids = paddle.randint(0, 128, [1, 200])  # below min_sparse_len: dense
    want = _logits(_sdpa(model), ids)
    planned = []
    full_path = rr_pf.attention_call

    def counting(state, layer, *args, **kwargs):
        planned.append(layer)
        return full_path(state, layer, *args, **kwargs)

    monkeypatch.setattr(rr_pf, "attention_call", counting)
    rr_pf.configure(model, rr.RRConfig(block_size=64, stride=8, min_sparse_len=250))
    torch.testing.assert_close(_logits(model, ids), want, atol=2e-5, rtol=2e-5)
    assert planned == [0]  # layer 0 decided for layer 1
    planned.clear()
    torch.testing.assert_close(_logits(model, ids), want, atol=2e-5, rtol=2e-5)
    assert planned == []
    with rr_pf.collect_stats(model) as stats:
        _logits(model, ids)
    assert planned == [0, 1] and all(r.is_dense for r in stats.records)
    planned.clear()
    rr_pf.configure(model, rr.RRConfig(block_size=64, stride=8, min_sparse_len=250, layer_overrides={1: {"min_sparse_len": 0}}))
    _logits(model, ids)
    _logits(model, ids)
    assert planned == [0, 1, 1]  # layer 1 runs sparse: always the full path


def test_configure_errors():
    model = _tiny("llama")
    with pytest.raises(ValueError, match="pass either cfg or method=/settings, not both"):
        rr_pf.configure(model, FULL, tau=0.5)
    with pytest.raises(TypeError, match="cfg must be an rrattention.RRConfig"):
        rr_pf.configure(model, {"tau": 0.5})
    with pytest.raises(ValueError, match="has no attention layer"):
        rr_pf.configure(paddle.nn.Linear(2, 2), FULL)
    rr_pf.configure(model, method="xattention", tau=0.9, block_size=64, min_sparse_len=0)
    assert _logits(model, paddle.randint(0, 128, [1, 200])).shape == (1, 200, 128)
    model.train()
    with pytest.raises(ValueError, match="call model.eval()"):
        model(paddle.randint(0, 128, [1, 16]))
    layer = rr_pf.attention_modules(model)[0]
    q = paddle.randn([1, 4, 8, 16])
    with pytest.raises(ValueError, match="does not support attention sinks"):
        rr_pf.attention_forward(layer, q, q, q, sink=paddle.zeros([4]))


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct: the offline GGUF, saved as HF safetensors, loaded by PaddleFormers."""
    from rrattention import assets

    tokenizer, hf_model = assets.load_smollm2(device="cpu", dtype=torch.float32)
    folder = tmp_path_factory.mktemp("smollm2")
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = transformers_pf.AutoConfig.from_pretrained(str(folder))
    config.fuse_rms_norm = False  # no CPU kernel for the fused norm
    model = transformers_pf.AutoModelForCausalLM.from_pretrained(str(folder), config=config, convert_from_hf=True, dtype="float32")
    return tokenizer, hf_model, model.eval()


def test_smollm2_converted_from_hf_runs_with_the_hook(smollm2):
    tokenizer, hf_model, model = smollm2
    text = assets_text()
    ids = tokenizer(text, add_special_tokens=False).input_ids[:1024]
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor([ids])).logits[0]
    pids = paddle.to_tensor([ids])
    sdpa = _logits(_sdpa(model), pids)[0]
    torch.testing.assert_close(sdpa, hf_logits, atol=2e-3, rtol=0)  # the conversion is faithful
    rr_pf.configure(model, rr.RRConfig(tau=1.0, min_sparse_len=0))
    torch.testing.assert_close(_logits(model, pids)[0], sdpa, atol=2e-4, rtol=0)
    rr_pf.configure(model, rr.RRConfig(tau=0.9, min_sparse_len=0))
    with rr_pf.collect_stats(model) as stats:
        sparse = _logits(model, pids)[0]
    nll = lambda logits: torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()  # noqa: E731
    assert len(stats.layer_sparsity()) == 30 and 0.05 < stats.sparsity() < 0.9
    assert abs(nll(sparse) - nll(sdpa)) < 0.1


def assets_text() -> str:
    from rrattention import assets

    corpus = assets.corpus("shakespeare")
    return corpus[200_000:210_000]
