"""The evaluation harness: config validation, deterministic task generation, metrics, resume."""

import json
import warnings

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from experiments import TASKS  # noqa: E402
from experiments.config import EvalConfig  # noqa: E402
from experiments.runner import RECORDS, load_records, run, summarize  # noqa: E402


def _config(tmp_path, **extra):
    data = {
        "run_name": "unit",
        "methods": ["full", {"name": "rrattention", "settings": {"block_size": 32, "stride": 4, "tau": 0.5, "min_sparse_len": 0}, "label": "rr"}],
        "tasks": [{"name": "fidelity", "settings": {"last_tokens": 32}}, {"name": "copy", "settings": {"passage_words": 6, "skip_words": 2}}],
        "lengths": [256, 384],
        "samples": 2,
        "output_dir": str(tmp_path),
        **extra,
    }
    return EvalConfig.from_dict(data)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"run_name": ""}, "run_name must be a non-empty name"),
        ({"methods": []}, "methods must list at least one method"),
        ({"methods": ["minference"]}, "method must be one of"),
        ({"methods": [{"name": "xattention", "settings": {"tau": 2}}]}, r"methods\[xattention\]: tau must be in \(0, 1\]"),
        ({"methods": ["full", "full"]}, "method labels must be unique"),
        ({"methods": [{"name": "full", "colour": 1}]}, r"unknown key\(s\) \['colour'\]"),
        ({"tasks": ["summarisation"]}, "unknown task 'summarisation'"),
        ({"tasks": [{"name": "copy", "settings": {"words": 3}}]}, r"tasks\[copy\]"),
        ({"lengths": [32]}, "lengths must be a list of token counts >= 64"),
        ({"tasks": [{"name": "fidelity", "settings": {"last_tokens": 0}}]}, r"tasks\[fidelity\]: last_tokens must be an int >= 1"),
        ({"tasks": [{"name": "fidelity", "settings": {"last_tokens": 256}}]}, r"tasks\[fidelity\]: last_tokens \(256\) must be smaller than every length, got length 256"),
        ({"samples": 0}, "samples must be an int >= 1"),
        ({"device": "tpu"}, "device must be auto, cpu or cuda"),
        ({"temperature": 0.0}, r"unknown evaluation config key\(s\) \['temperature'\]"),
    ],
)
def test_config_validation(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **change)


def test_config_files_in_the_repository_load():
    from pathlib import Path

    configs = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml") if not p.name.startswith(("rrattention", "ablation")))
    assert configs
    for path in configs:
        EvalConfig.from_yaml(path)


def test_samples_are_deterministic_given_the_seed(context):
    for name, settings in (("fidelity", {}), ("copy", {"passage_words": 5})):
        task = TASKS[name](**settings)
        a, b = task.make_samples(context, 300, 3, seed=1), task.make_samples(context, 300, 3, seed=1)
        assert a == b and all(len(s["ids"]) == 300 for s in a)
        assert task.make_samples(context, 300, 3, seed=2) != a
    copy = TASKS["copy"](passage_words=5, skip_words=2).make_samples(context, 300, 1, seed=0)[0]
    n, depth = copy["passage_tokens"], copy["depth"]
    assert copy["ids"][depth : depth + n] == copy["ids"][-n:]  # inserted at its depth, repeated at the end
    assert len(copy["ids"]) - n < copy["score_from"] < len(copy["ids"])  # scored after the cue words


def test_metrics(context):
    context.use_method(EvalConfig.from_dict({"run_name": "x", "methods": ["full"], "tasks": ["copy"], "lengths": [128]}).methods[0].config())
    sample = TASKS["fidelity"](last_tokens=16).make_samples(context, 200, 1, seed=0)[0]
    metrics = TASKS["fidelity"](last_tokens=16).evaluate(context, sample)
    assert metrics["delta_nll"] == pytest.approx(0.0, abs=1e-6) and metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["nll"] > 0 and metrics["sparsity"] == 0.0
    # copy accuracy counts argmax hits over the scored span: a model that always predicts token t scores its share
    copy = {"ids": [5] * 50 + [7] * 10, "score_from": 50}
    logits = torch.zeros(11, 256)
    logits[:, 7] = 1.0
    original = context.logits
    try:
        context.logits = lambda ids, keep: (logits[-keep:], 0.25)
        assert TASKS["copy"]().evaluate(context, copy) == {"accuracy": 1.0, "sparsity": 0.25}
        logits[:5, 7], logits[:5, 9] = 0.0, 1.0
        assert TASKS["copy"]().evaluate(context, copy)["accuracy"] == pytest.approx(0.5)
    finally:
        context.logits = original


def test_run_is_resumable_and_summarised(tmp_path, context):
    cfg = _config(tmp_path)
    records = run(cfg, progress=False, context=context)
    assert len(records) == 2 * 2 * 2 * 2  # methods × tasks × lengths × samples
    path = cfg.run_dir / RECORDS
    lines = path.read_text().splitlines()
    # kill mid-write: a partial last line, and one finished sample lost with it
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    again = run(cfg, progress=False, context=context)
    keys = [(r["method"], r["task"], r["length"], r["sample"]) for r in map(json.loads, path.read_text().splitlines())]
    assert len(again) == len(records) == len(keys) == len(set(keys))  # the lost sample redone once, no duplicate
    assert run(cfg, progress=False, context=context) == load_records(path)  # nothing left to do
    summary = summarize(cfg, again)
    assert set(summary.columns) >= {"method", "task", "length", "n", "score", "sparsity", "pct_of_full"}
    copy = summary[summary.task == "copy"].set_index(["length", "method"])
    for length in (256, 384):  # % of full: the method's mean over full's mean (NaN where full scores 0)
        full, rr_score = copy.loc[(length, "full"), "score"], copy.loc[(length, "rr"), "score"]
        want = 100.0 * rr_score / full if full else float("nan")
        assert copy.loc[(length, "rr"), "pct_of_full"] == pytest.approx(want, nan_ok=True)
    assert (summary[summary.method == "rr"].sparsity > 0).all()
    for name in ("summary.csv", "table.md", "fidelity.png", "copy.png", "config.yaml", "environment.json"):
        assert (cfg.run_dir / name).exists(), name
    assert EvalConfig.from_yaml(cfg.run_dir / "config.yaml") == cfg


def test_runs_where_a_sparse_method_ran_dense_are_flagged(tmp_path, context):
    methods = [{"name": "rrattention", "settings": {"block_size": 32, "stride": 4, "tau": 0.5, "min_sparse_len": 0}, "label": "rr"},
               {"name": "rrattention", "settings": {"block_size": 32, "stride": 4, "tau": 0.5}, "label": "rr-default"}]
    fidelity = [{"name": "fidelity", "settings": {"last_tokens": 32}}]
    cfg = _config(tmp_path, methods=methods, tasks=fidelity, lengths=[256], samples=1)
    records = run(cfg, progress=False, context=context)
    dense = {r["method"]: r["dense_calls"] for r in records}
    assert dense == {"rr": 0.0, "rr-default": 1.0}  # 256 keys < the default min_sparse_len (the measured crossover)
    with pytest.warns(UserWarning, match=r"ran dense in rr-default fidelity L=256: .*min_sparse_len"):
        summarize(cfg, records, plots=False)
    assert "min_sparse_len: 0" in (cfg.run_dir / "table.md").read_text()
    sparse_only = _config(tmp_path / "b", methods=methods[:1], tasks=fidelity, lengths=[256], samples=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summarize(sparse_only, run(sparse_only, progress=False, context=context), plots=False)


RECALL_TASKS = ["json_kv", "ruler_mk_niah_2", "ruler_mk_niah_3", "ruler_mv_niah", "ruler_vt", "ruler_cwe"]


@pytest.mark.parametrize("name", RECALL_TASKS)
def test_recall_tasks_generate_helmet_records(tmp_path, context, name):
    from experiments import recall
    from experiments.recall import prompt_ids

    task = TASKS[name](max_new_tokens=20)
    samples = task.make_samples(context, 1200, 2, seed=3)
    assert samples == task.make_samples(context, 1200, 2, seed=3) and samples != task.make_samples(context, 1200, 2, seed=4)
    for sample in samples:
        record = sample["record"]
        assert prompt_ids(context, sample["user"], sample["system"]).shape[1] <= 1200 - 20
        answers = [record["answer"]] if name == "json_kv" else record["outputs"]
        assert all(a in record["context"] for a in answers)  # every answer is in the haystack
        if name == "json_kv":
            assert set(record) >= {"context", "question", "answer", "num_kvs"}
            assert json.loads(record["context"].split("\n", 1)[1])[record["question"]] == record["answer"]
        else:
            assert set(record) >= {"context", "outputs", "length"}
    # scored by HELMET's metric against the record's answers
    perfect = " ".join(answers)
    original = context.generate
    try:
        context.generate = lambda ids, max_new_tokens: (perfect, 0.5)
        assert task.evaluate(context, samples[-1]) == {task.primary_metric: 1.0, "sparsity": 0.5}
        context.generate = lambda ids, max_new_tokens: ("no idea", 0.5)
        assert task.evaluate(context, samples[-1])[task.primary_metric] == 0.0
    finally:
        context.generate = original
    path = recall.export(name, samples, 1200, tmp_path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1] and lines[1] | {"index": 1} == {"index": 1, **samples[1]["record"]}
    assert path.relative_to(tmp_path).parts[0] == ("json_kv" if name == "json_kv" else "ruler")


def test_metric_functions():
    from experiments.metrics import exact_match, normalize_answer, string_match_all, substring_exact_match

    assert normalize_answer("The  Answer, is: 42!") == "answer is 42"
    assert substring_exact_match("I think the answer is Paris.", ["paris", "Lyon"]) == 1.0
    assert substring_exact_match("London", "Paris") == 0.0
    assert exact_match("Paris.", "paris") == 1.0 and exact_match("in Paris", "paris") == 0.0
    assert string_match_all("values: 1, 3", ["1", "2", "3", "4"]) == 0.5


def test_helmet_local_files(tmp_path, context):
    from experiments import recall
    from experiments.config import task_instances

    data = tmp_path / "data"
    for name in ("json_kv", "ruler_mk_niah_2", "ruler_mk_niah_3", "ruler_mv_niah"):
        samples = TASKS[name](max_new_tokens=20).make_samples(context, 8192 if name == "ruler_mv_niah" else 1500, 2, seed=1)
        path = recall.export(name, samples, 8192, data)
        if name == "json_kv":  # HELMET names JSON KV files by pair count; 8K reads k105
            path.rename(path.with_name("test_k105_dep6.jsonl"))
    kilt = data / "kilt"
    kilt.mkdir()
    for name, dep in (("nq", 6), ("triviaqa", 6), ("popqa", 6), ("hotpotqa", 3)):
        rows = [{"question": f"Who wrote {name} {i}?", "answers": [f"Author {i}", f"A. {i}"],
                 "ctxs": [{"title": "Doc", "text": f"{name} {i} was written by Author {i}."}]} for i in range(2)]
        (kilt / f"{name}-dev-multikilt_1000_k50_dep{dep}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    cfg = _config(tmp_path, tasks=[{"name": "helmet", "settings": {"data_dir": str(data), "categories": ["recall", "rag"]}}],
                  lengths=[8192])
    tasks = task_instances(cfg)
    assert list(tasks) == ["helmet_json_kv", "helmet_ruler_niah_mk_2", "helmet_ruler_niah_mk_3", "helmet_ruler_niah_mv",
                           "helmet_kilt_nq", "helmet_kilt_triviaqa", "helmet_kilt_popqa", "helmet_kilt_hotpotqa"]
    assert EvalConfig.from_dict(cfg.to_dict()) == cfg
    original = context.generate
    try:
        for task in tasks.values():
            samples = task.make_samples(context, 8192, 2, seed=0)
            assert len(samples) == 2 and samples[0]["user"]
            context.generate = lambda ids, max_new_tokens, s=samples[1]: (" and ".join(s["answers"]), 0.0)
            assert task.evaluate(context, samples[1])[task.primary_metric] == 1.0
            context.generate = lambda ids, max_new_tokens: ("unknown", 0.0)
            assert task.evaluate(context, samples[1])[task.primary_metric] == 0.0
    finally:
        context.generate = original
    with pytest.raises(FileNotFoundError, match="no HELMET file"):
        tasks["helmet_kilt_nq"].make_samples(context, 16384, 1, seed=0)
    with pytest.raises(ValueError, match="helmet category 'summ' is not supported: HELMET scores summarisation with a GPT-4o judge"):
        _config(tmp_path, tasks=[{"name": "helmet", "settings": {"data_dir": str(data), "categories": ["summ"]}}])
    with pytest.raises(ValueError, match="unknown helmet category 'video'"):
        _config(tmp_path, tasks=[{"name": "helmet", "settings": {"data_dir": str(data), "categories": ["video"]}}])
    with pytest.raises(ValueError, match="helmet needs settings.data_dir"):
        _config(tmp_path, tasks=[{"name": "helmet", "settings": {"categories": ["rag"]}}])


def test_attention_fidelity(context):
    import rrattention as rr

    task = TASKS["attention_fidelity"](layers=[0, 1])
    sample = task.make_samples(context, 320, 1, seed=0)[0]
    context.use_method(rr.methods.make_config("full", {"block_size": 32}))
    full = task.evaluate(context, sample)
    assert full["mass"] == pytest.approx(1.0) and full["out_rel_err"] == pytest.approx(0.0, abs=1e-6) and full["sparsity"] == 0
    context.use_method(rr.RRConfig(block_size=32, stride=4, tau=0.5, min_sparse_len=0))
    sparse = task.evaluate(context, sample)
    assert 0 < sparse["sparsity"] < 1 and 0 < sparse["mass_worst_head"] <= sparse["mass"] < 1 and sparse["out_rel_err"] > 0
    per_head = np.array(sparse["sparsity_per_head"])
    assert sparse["layers"] == [0, 1] and per_head.shape == (2, 4) == np.shape(sparse["mass_per_head"])
    assert per_head.mean() == pytest.approx(sparse["sparsity"], abs=1e-4)
    assert min(min(row) for row in sparse["mass_per_head"]) == pytest.approx(sparse["mass_worst_head"], abs=1e-4)
    context.use_method(rr.RRConfig(block_size=32, stride=4, tau=0.5))  # below min_sparse_len: the pipeline is dense
    assert task.evaluate(context, sample)["mass"] == pytest.approx(1.0)
    assert task.evaluate(context, sample)["layers"] == TASKS["attention_fidelity"](layers="all").evaluate(context, sample)["layers"]
    for bad in ([], "first", [-1], [0.5]):
        with pytest.raises(ValueError, match="layers must"):
            TASKS["attention_fidelity"](layers=bad)
    with pytest.raises(ValueError, match=r"layers \[7\] do not exist"):
        TASKS["attention_fidelity"](layers=[7]).evaluate(context, sample)
