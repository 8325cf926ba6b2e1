"""transformers' own tensor parallelism (``tp_plan="auto"``) with the rrattention hook: each rank
samples with global head indices, so the ranks' block masks side by side, and the outputs, equal
one device's. End to end under ``torchrun`` over gloo on the CPU (TP=2 and TP=4 of a tiny random
Llama, 8 query / 4 KV heads), and the hook's head placement with simulated ranks (replicated KV
heads, which transformers' own plans never make, and the declines)."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")

import rrattention as rr  # noqa: E402
from rrattention.integrations import _calls, hf  # noqa: E402
from rrattention.integrations.tensor_parallel import HeadShard, head_shard, rank_head_start, replicated_kv_reason  # noqa: E402
from tests import tp_worker  # noqa: E402
from tests.helpers import make_qkv  # noqa: E402

Q_HEADS, KV_HEADS, HEAD_DIM = 8, 4, 16
WORKER = Path(__file__).with_name("tp_worker.py")
CAPTURE = "rrattention_tp_test_capture"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=Q_HEADS * HEAD_DIM, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=Q_HEADS, num_key_value_heads=KV_HEADS,
                                      max_position_embeddings=4096)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama_tp")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_device(model_dir):
    """TP=1: the worker's cases on the unsharded model, and the queries and keys each layer saw."""
    from transformers import AttentionInterface

    captured = {}

    def capture(module, query, key, value, attention_mask, **kwargs):
        captured[module.layer_idx] = (query.detach().clone(), key.detach().clone())
        return hf.attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(CAPTURE, capture)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                              attn_implementation=hf.ATTN_IMPLEMENTATION).eval()
    results = tp_worker.run_cases(model)
    rr.hf.configure(model, tp_worker.CONFIGS["round_robin"])
    model.set_attn_implementation(CAPTURE)
    with torch.no_grad():
        model(**tp_worker.inputs(model.config.vocab_size)[1], use_cache=False)
    return results, captured


def _torchrun(tp: int, model_dir: Path, out: Path) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # gloo on the CPU, also on a GPU machine
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(tp), str(WORKER),
           str(model_dir), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(tp)]


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_ranks_select_and_output_as_one_device(tp, model_dir, one_device, tmp_path):
    want, _ = one_device
    ranks = _torchrun(tp, model_dir, tmp_path)
    assert [r["tensor_parallel"] for r in ranks] == [(p, tp) for p in range(tp)]
    local = Q_HEADS // tp
    for case, expected in want.items():
        records = [r[case]["records"] for r in ranks]
        assert len(expected["records"]) == 2 and all(len(rec) == 2 for rec in records), case  # both layers, sparse
        for j, (layer, head_start, mask, per_head, dense) in enumerate(expected["records"]):
            assert head_start == 0 and not dense
            assert [rec[j][0] for rec in records] == [layer] * tp
            assert [rec[j][1] for rec in records] == [p * local for p in range(tp)], case
            assert torch.equal(torch.cat([rec[j][2] for rec in records], 1), mask), (case, layer)
            assert torch.equal(torch.cat([rec[j][3] for rec in records], 1), per_head), (case, layer)
            assert 0.2 < float(per_head.mean()) < 0.9  # the selection is active
        for r in ranks:  # every rank holds the all-reduced output
            torch.testing.assert_close(r[case]["logits"], expected["logits"], atol=1e-5, rtol=1e-5)


def test_the_end_to_end_inputs_depend_on_the_head_offset(one_device):
    """The check above can fail: ranks that sampled with local head indices select other blocks."""
    results, captured = one_device
    cfg = tp_worker.CONFIGS["round_robin"]
    for layer, (q, k) in captured.items():
        mask = results[("round_robin", 1)]["records"][layer][2]
        for tp in (2, 4):
            hq, hkv = Q_HEADS // tp, KV_HEADS // tp

            def rank_mask(p, head_start):
                qs, ks = q[:, p * hq:(p + 1) * hq], k[:, p * hkv:(p + 1) * hkv]
                return rr.rr_attention(qs, ks, ks, cfg, layer=layer, return_stats=True, head_start=head_start,
                                       backend="reference")[1].block_mask
            assert torch.equal(torch.cat([rank_mask(p, p * hq) for p in range(tp)], 1), mask)
            assert not torch.equal(torch.cat([rank_mask(p, 0) for p in range(tp)], 1), mask)


class _Attention(torch.nn.Module):
    """An attention layer as the hook sees one: its config and place in the model."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx, self.is_causal = config, layer_idx, True
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads


def _simulated_rank(cfg, hq, hkv, rank, size, q, k, v, layer=1):
    """``(out [B, L, Hq_local, D], block mask)`` of one rank's call through the HF hook."""
    module = _Attention(SimpleNamespace(num_attention_heads=hq, num_key_value_heads=hkv), layer)
    _calls.attach([module], cfg, "reference", tensor_parallel=(rank, size))
    with _calls.collecting([module], None, timing=False, block_masks=True) as stats:
        out, _ = hf.attention_forward(module, q, k, v, None, scaling=q.shape[-1] ** -0.5)
    return out, stats.records[0].block_mask


@pytest.mark.parametrize("hq, hkv, tp, policy", [
    (8, 4, 2, "round_robin"), (8, 4, 4, "group_round_robin"), (8, 2, 4, "round_robin"),  # 4 > 2: replicated KV
    (8, 2, 4, "random"), (12, 4, 2, "group_round_robin"),
])
def test_simulated_ranks_through_the_hook(hq, hkv, tp, policy):
    cfg = rr.RRConfig(stride=8, block_size=32, tau=0.5, min_sparse_len=0, head_shift=policy, seed=3)
    q, k, v = make_qkv(1, hq, hkv, 320, 320, 16, seed=hq + tp)
    want, mask = _simulated_rank(cfg, hq, hkv, 0, 1, q, k, v)
    h_local = hq // tp
    outs, masks = [], []
    for p in range(tp):
        first_kv = p * h_local // (hq // hkv)
        kv = slice(p * hkv // tp, (p + 1) * hkv // tp) if tp <= hkv else slice(first_kv, first_kv + 1)
        out, m = _simulated_rank(cfg, hq, hkv, p, tp, q[:, p * h_local:(p + 1) * h_local], k[:, kv], v[:, kv])
        outs.append(out)
        masks.append(m)
    assert torch.equal(torch.cat(masks, 1), mask)
    torch.testing.assert_close(torch.cat(outs, 2), want, atol=1e-5, rtol=1e-5)


def test_replicated_kv_heads_decline_group_round_robin():
    cfg = rr.RRConfig(stride=8, block_size=32, min_sparse_len=0, head_shift="group_round_robin")
    q, k, v = make_qkv(1, 2, 1, 64, 64, 16)
    with pytest.raises(ValueError, match="group_round_robin.*replicates"):
        _simulated_rank(cfg, 8, 2, 1, 4, q, k, v)
    # a layer override that turns it on is declined for that layer
    cfg = rr.RRConfig(stride=8, block_size=32, min_sparse_len=0, layer_overrides={1: {"head_shift": "group_round_robin"}})
    _simulated_rank(cfg, 8, 2, 1, 4, q, k, v, layer=0)
    with pytest.raises(ValueError, match="layer 1"):
        _simulated_rank(cfg, 8, 2, 1, 4, q, k, v, layer=1)


def test_unsupported_splits_are_named():
    q, k, v = make_qkv(1, 3, 1, 64, 64, 16)
    with pytest.raises(ValueError, match="3 of the model's 8 query heads"):
        _simulated_rank(rr.RRConfig(), 8, 2, 0, 2, q, k, v)
    q, k, v = make_qkv(1, 4, 4, 64, 64, 16)
    with pytest.raises(ValueError, match="4 of the model's 4 KV heads"):
        _simulated_rank(rr.RRConfig(), 8, 4, 0, 2, q, k, v)


def test_head_shard_rules():
    assert rank_head_start(3, 8) == 24
    assert head_shard(rank=1, size=2, local_q_heads=16, local_kv_heads=4, total_q_heads=32,
                      total_kv_heads=8) == HeadShard(16, False)
    assert head_shard(rank=5, size=8, local_q_heads=4, local_kv_heads=1, total_q_heads=32,
                      total_kv_heads=2) == HeadShard(20, True)
    # attention replicated on every rank (a plan that does not shard it): the whole model's heads
    assert head_shard(rank=1, size=2, local_q_heads=32, local_kv_heads=8, total_q_heads=32,
                      total_kv_heads=8) == HeadShard(0, False)
    assert head_shard(rank=0, size=1, local_q_heads=4, local_kv_heads=2, total_q_heads=4, total_kv_heads=2) == HeadShard()
    with pytest.raises(ValueError, match="rank"):
        head_shard(rank=2, size=2, local_q_heads=2, local_kv_heads=1, total_q_heads=4, total_kv_heads=2)
    assert replicated_kv_reason(["group_round_robin"], 4, 2) is not None
    assert replicated_kv_reason(["group_round_robin"], 2, 2) is None
    assert replicated_kv_reason(["round_robin", "random"], 8, 2) is None


def test_a_model_without_tensor_parallelism_starts_at_head_zero():
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2))
    assert hf.tensor_parallel_rank(hf.attention_modules(model)[0]) == (0, 1)
    rr.hf.configure(model, rr.RRConfig(stride=4, block_size=32, min_sparse_len=0))
    with torch.no_grad(), rr.hf.collect_stats(model, block_masks=True) as stats:
        model(torch.randint(0, 64, (1, 96)), use_cache=False)
    (record,) = stats.prefill_records()
    assert record.head_start == 0 and record.block_mask.shape == (1, 4, 3, 3)


def test_custom_op_carries_head_start():
    """The op under torch.compile takes the rank's first head: rank 1's heads select as in the whole call."""
    cfg = rr.RRConfig(stride=8, block_size=32, tau=0.5, min_sparse_len=0)
    q, k, v = make_qkv(1, 8, 4, 256, 256, 16, seed=4)
    want = rr.rr_attention(q, k, v, cfg, layer=2, backend="reference").transpose(1, 2)
    config = _calls.ModelState(cfg).config_json
    args = (q[:, 4:], k[:, 2:], v[:, 2:], None, config, 2, 0.25, "reference")
    got = torch.ops.rrattention.attention(*args, 4)
    torch.testing.assert_close(got, want[:, :, 4:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(torch.ops.rrattention.attention(*args, 0), want[:, :, 4:], atol=1e-5, rtol=1e-5)
    torch.library.opcheck(torch.ops.rrattention.attention.default, (*args, 4),
                          test_utils=("test_schema", "test_faketensor"))


def test_compiled_hook_passes_the_rank_head_start():
    """Under torch.compile the hook calls the custom op with the rank's first head, without a graph break."""
    cfg = rr.RRConfig(stride=8, block_size=32, tau=0.5, min_sparse_len=0)
    q, k, v = make_qkv(1, 8, 4, 256, 256, 16, seed=6)
    want, _ = _simulated_rank(cfg, 8, 4, 0, 1, q, k, v)
    module = _Attention(SimpleNamespace(num_attention_heads=8, num_key_value_heads=4), 1)
    _calls.attach([module], cfg, "reference", tensor_parallel=(1, 2))
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: hf.attention_forward(module, q, k, v, None, scaling=0.25)[0],
                             backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q[:, 4:], k[:, 2:], v[:, 2:]), want[:, :, 4:], atol=1e-5, rtol=1e-5)
