"""AttentionPlan: planned once per layout, run per call, equal to the public functions; the
framework hook plans once per forward pass; one dense policy with the measured crossover."""

import pytest
import torch

import rrattention as rr
from rrattention import plan as plan_module
from tests.helpers import make_qkv

CFG = rr.RRConfig(stride=4, block_size=32, tau=0.8, min_sparse_len=150, dense_layers=(1,),
                  layer_overrides={2: {"tau": 0.5, "stride": 8}})


def test_a_plan_runs_every_layer_as_the_public_function_does():
    q, k, v = make_qkv(2, 4, 2, 200, 260, 32, seed=3)
    plan = rr.AttentionPlan(CFG, q_heads=4, kv_heads=2, head_dim=32, dtype=q.dtype, device=q.device, scale=32**-0.5,
                            batch=2, q_len=200, k_len=260)
    for layer in (None, 0, 1, 2, 0):  # layer 1 dense, layer 2 overridden; the repeated 0 reuses its plan
        run = plan.run(q, k, v, layer)
        want, stats = rr.rr_attention(q, k, v, CFG, layer=layer, return_stats=True)
        assert torch.equal(run.out, want)
        got = plan.stats(run)
        assert torch.equal(got.block_mask, stats.block_mask) and got.dense_reasons == stats.dense_reasons
    assert plan.layer_plan(1).dense_reason == "layer 1 is in dense_layers"
    assert plan.layer_plan(2).cfg.stride == 8 and plan.layer_plan(0) is plan.layer_plan(0)
    out = torch.empty(2, 200, 4, 32).transpose(1, 2)  # written in place, any strides with a unit last one
    assert plan.run(q, k, v, 0, out=out).out is out and torch.equal(out, rr.rr_attention(q, k, v, CFG, layer=0))


def test_dense_reasons_are_judged_per_layer_setting_without_planning_the_layer():
    cfg = rr.RRConfig(stride=4, block_size=32, min_sparse_len=150, dense_layers=(1,),
                      layer_overrides={2: {"min_sparse_len": 50}})
    plan = rr.AttentionPlan(cfg, q_heads=4, kv_heads=2, head_dim=32, dtype=torch.float32, device=torch.device("cpu"),
                            scale=32**-0.5, batch=1, q_len=100, k_len=100)
    reasons = [plan.dense_reason(layer) for layer in (0, 1, 2, 3, None, 1, 2)]
    assert reasons == ["Lk=100 < min_sparse_len=150", "layer 1 is in dense_layers", None,
                       "Lk=100 < min_sparse_len=150", "Lk=100 < min_sparse_len=150", "layer 1 is in dense_layers", None]
    assert [plan.layer_plan(layer).dense_reason for layer in (0, 1, 2)] == reasons[:3]


def test_layers_of_one_setting_share_one_judgement(monkeypatch):
    """A forward pass judges the model-wide setting once (config, method, dense policy, backends),
    not once per layer; layers with settings of their own are judged on their own."""
    cfg = rr.RRConfig(stride=4, block_size=32, min_sparse_len=150, dense_layers=(1,),
                      layer_overrides={2: {"min_sparse_len": 50}})
    plan = rr.AttentionPlan(cfg, q_heads=4, kv_heads=2, head_dim=32, dtype=torch.float32, device=torch.device("cpu"),
                            scale=32**-0.5, batch=1, q_len=100, k_len=100)
    judged = []
    judge = plan._judge
    monkeypatch.setattr(plan, "_judge", lambda layer: judged.append(layer) or judge(layer))
    assert [plan.dense_backend(layer) for layer in (0, 3, 1, 2, None)] == ["sdpa", "sdpa", "sdpa", None, "sdpa"]
    layer_plans = [plan.layer_plan(layer) for layer in range(6)]
    assert judged == [0, 1, 2]  # the model-wide setting (first asked for layer 0), layer 1's, layer 2's
    assert [lp.layer for lp in layer_plans] == list(range(6))
    assert layer_plans[0].dense is layer_plans[5].dense and layer_plans[2].ops is not None
    assert [lp.backends["attention"] for lp in layer_plans] == ["sdpa", "sdpa", "reference", "sdpa", "sdpa", "sdpa"]


def test_a_padding_plan_equals_each_sequence_alone():
    q, k, v = make_qkv(2, 4, 2, 180, 180, 32, seed=4)
    key_valid = torch.ones(2, 180, dtype=torch.bool)
    key_valid[1, :50] = False  # left padding
    padding = rr.PaddingPlan(CFG, key_valid.clone(), key_valid, q_heads=4, kv_heads=2, head_dim=32, dtype=q.dtype,
                             device=q.device, scale=32**-0.5)
    out, run = padding.run(q, k, v, 0)
    alone = rr.rr_attention(q[1:, :, 50:], k[1:, :, 50:], v[1:, :, 50:], CFG, layer=0)
    torch.testing.assert_close(out[1, 50:], alone[0].transpose(0, 1), atol=1e-6, rtol=1e-6)
    assert not bool(out[1, :50].any())  # padding queries output zeros
    assert padding.stats(run).dense_reasons == (None, "Lk=130 < min_sparse_len=150")
    assert padding.dense_reason(1) == "layer 1 is in dense_layers"


def test_the_hook_plans_once_per_forward_pass(monkeypatch):
    transformers = pytest.importorskip("transformers")
    built = []
    for cls in (plan_module.AttentionPlan, plan_module.PaddingPlan):
        original = cls.__init__

        def counting(self, *args, _original=original, _name=cls.__name__, **kwargs):
            built.append(_name)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    rr.hf.configure(model, rr.RRConfig(block_size=32, stride=4, tau=0.8, min_sparse_len=0))
    ids = torch.randint(1, 128, (2, 200), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(ids, use_cache=False)
        assert built == ["AttentionPlan"]  # no padding: one padded plan for the three layers
        model(ids, use_cache=False)
        assert built == ["AttentionPlan"]  # same layout, next forward: the cached plan
        mask = torch.ones(2, 200, dtype=torch.long)
        mask[0, :30] = 0
        built.clear()
        with rr.hf.collect_stats(model) as stats:
            model(ids, attention_mask=mask, use_cache=False)
    # the mask read once for the three layers: its packed plan inside, which (without the Triton
    # backend, here on the CPU) plans each of the two sequences once
    assert built == ["PaddingPlan"] + ["AttentionPlan"] * (1 if torch.cuda.is_available() else 3)
    # dense calls report their visible blocks on the call's grid, like sparse ones
    assert all(r.sparsity_per_head.shape == (2, 4) for r in stats.records)


def test_the_measured_crossover_is_the_default_min_sparse_len():
    table = rr.crossover.table()
    assert table["entries"] and all(e["min_sparse_len"] > 0 for e in table["entries"])
    smollm2 = next(e for e in table["entries"] if (e["head_dim"], e["q_heads"], e["kv_heads"]) == (64, 9, 3))
    assert rr.crossover.min_sparse_len(64, 9, 3) == smollm2["min_sparse_len"]
    # an unmeasured shape takes the nearest measured one with its head dim
    assert rr.crossover.min_sparse_len(64, 18, 6) in {e["min_sparse_len"] for e in table["entries"] if e["head_dim"] == 64}
    threshold = rr.crossover.min_sparse_len(32, 4, 2)
    cfg = rr.RRConfig()
    assert rr.dense_reason(cfg, None, threshold, threshold, head_dim=32, q_heads=4, kv_heads=2) is None
    assert rr.dense_reason(cfg, None, 10, threshold - 1, head_dim=32, q_heads=4, kv_heads=2).startswith(
        f"Lk={threshold - 1} < min_sparse_len={threshold}")
    with pytest.raises(ValueError, match="needs head_dim, q_heads and kv_heads"):
        rr.dense_reason(cfg, None, 10, 100)
    assert rr.dense_reason(rr.RRConfig(min_sparse_len=50), None, 10, 100) is None  # an explicit value needs no shape


class _RecordingDense(rr.backends.base.Backend):
    """A dense-stage backend that runs the reference and counts its calls (dispatch picks it first)."""

    name = "recording"
    description = "test double: the reference's dense attention, counted"
    stages = frozenset({rr.backends.DENSE})
    devices = frozenset({"cpu", "cuda"})
    block_sizes = frozenset({128})  # a sparse-stage limit: must not apply to dense calls

    def __init__(self):
        self.calls = 0

    def dense_attend(self, q, k, v, *, scale, out=None):
        self.calls += 1
        return rr.backends.get("reference").dense_attend(q, k, v, scale=scale, out=out)


@pytest.fixture
def recording_dense(monkeypatch):
    backend = _RecordingDense()
    monkeypatch.setitem(rr.backends.BACKENDS, backend.name, backend)
    monkeypatch.setattr(rr.backends, "PRIORITY", (backend.name, *rr.backends.PRIORITY))
    rr.backends.choose.cache_clear()
    yield backend
    rr.backends.choose.cache_clear()


def test_dense_calls_run_the_first_backend_that_accepts_the_dense_stage(recording_dense):
    q, k, v = make_qkv(1, 4, 2, 300, 300, 32)
    cfg = rr.RRConfig(block_size=64, stride=4, min_sparse_len=10_000)  # block 64: outside the double's sizes
    out, stats = rr.rr_attention(q, k, v, cfg, return_stats=True)
    assert recording_dense.calls == 1 and stats.backends == {"attention": "recording"} and stats.is_dense
    torch.testing.assert_close(out, rr.reference.dense_causal_attention(q, k, v, scale=32**-0.5))
    rr.rr_attention(q, k, v, rr.RRConfig(block_size=64, stride=4, min_sparse_len=0))  # sparse: not a dense call
    assert recording_dense.calls == 1
    # the shipped backends: only the reference and FA4 implement the dense stage, FA4 only for long calls
    problem = rr.backends.Problem(torch.device("cpu"), 64, torch.float32, head_dim=32)
    reasons = rr.backends.explain(rr.backends.DENSE, problem)
    assert reasons["reference"] == [] and reasons["recording"] == []
    assert any("does not implement the dense stage" in r for r in reasons["triton"])
    assert not any("block_size" in r for r in reasons["fa4"])
    assert any("block_size" in r for r in rr.backends.explain("attention", problem)["fa4"])


def test_the_hook_runs_unmasked_dense_calls_through_the_plans_dense_backend(recording_dense):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 128, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        want = model(ids).logits
        padding = torch.ones_like(ids)
        padding[0, :10] = 0
        want_padded = model(ids, attention_mask=padding).logits
        rr.hf.configure(model, rr.RRConfig(min_sparse_len=10_000))
        with rr.hf.collect_stats(model) as stats:
            got = model(ids).logits
        assert recording_dense.calls == 2 and {r.backends["attention"] for r in stats.records} == {"recording"}
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(ids).logits, want, atol=1e-5, rtol=1e-5)  # not collecting: the fast path
        assert recording_dense.calls == 4
        got_padded = model(ids, attention_mask=padding).logits  # a padding mask: transformers' SDPA with it
        assert recording_dense.calls == 4
        torch.testing.assert_close(got_padded[1], want_padded[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_padded[0, 10:], want_padded[0, 10:], atol=1e-5, rtol=1e-5)


def test_a_packed_plan_weighs_its_batch_as_one_call_of_its_sequences_summed_work():
    """FA4's break-even compares a call's dense work; a packed batch runs as one call."""
    spans = ((0, 1000, 0, 3000), (1000, 5096, 3000, 7096))
    cu_q, cu_k = torch.tensor([0, 1000, 5096], dtype=torch.int32), torch.tensor([0, 3000, 7096], dtype=torch.int32)
    kw = dict(q_heads=8, kv_heads=2, head_dim=128, dtype=torch.bfloat16, device=torch.device("cpu"), scale=0.1)
    cfg = rr.RRConfig()
    known = rr.AttentionPlan(cfg, packed=rr.backends.Packed(cu_q, cu_k, 4096, 4096, spans), **kw)
    want = rr.backends.causal_flops(1, 8, 1000, 3000, 128) + rr.backends.causal_flops(1, 8, 4096, 4096, 128)
    assert known.problem(cfg, varlen=True).dense_flops == want
    unread = rr.AttentionPlan(cfg, packed=rr.backends.Packed(cu_q, cu_k, 4096, 4096), **kw)
    assert unread.problem(cfg, varlen=True).dense_flops is None  # offsets not read back: unknown, not guessed
