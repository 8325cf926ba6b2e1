"""Data-parallel evaluation: `torchrun --nproc-per-node 2 tools/run_eval.py` over gloo writes the
records one process writes, refuses and starts over as one process does, and a run killed at one
world size is completed at another without losing or repeating a record."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("transformers")

from experiments import distributed, runner  # noqa: E402
from experiments.config import EvalConfig  # noqa: E402
from experiments.fingerprint import RunMismatchError  # noqa: E402
from experiments.runner import RANK_RECORDS, RECORDS, RecordConflictError, load_records, read_records, run, shard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import run_eval  # noqa: E402

SAMPLES = 24
RR = {"name": "rrattention", "settings": {"block_size": 32, "stride": 4, "tau": 0.5, "min_sparse_len": 0}, "label": "rr"}


def _write_config(folder: Path, model_dir: Path, **change) -> Path:
    settings = {"run_name": "dp", "model": str(model_dir / "model"), "methods": ["full", RR],
                "tasks": [{"name": "fidelity", "settings": {"last_tokens": 32}}], "lengths": [256], "samples": SAMPLES, **change}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dp.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return folder / "dp.yaml"


def _env(model_dir: Path) -> dict:
    return {**os.environ, "RRATTENTION_CACHE": str(model_dir / "cache"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _torchrun(n: int, folder: Path, model_dir: Path, *extra: str, check: bool = True, popen: bool = False):
    # --standalone: a free port of its own, so that concurrent test workers never meet
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
               str(ROOT / "tools" / "run_eval.py"), "--config", "dp.yaml", "--no-progress", *extra]
    if popen:
        return subprocess.Popen(command, cwd=folder, env=_env(model_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = subprocess.run(command, cwd=folder, env=_env(model_dir), capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _content(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """One process's run of the config, in-process: its records and summary."""
    folder = tmp_path_factory.mktemp("single")
    _write_config(folder, tiny_model_dir)
    env = {k: v for k, v in _env(tiny_model_dir).items() if k != "OMP_NUM_THREADS"}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for k in ("RRATTENTION_CACHE", "HF_HUB_OFFLINE"):
            mp.setenv(k, env[k])
        assert run_eval.main(["--config", "dp.yaml", "--no-progress"]) == 0
    return load_records(folder / "runs" / "dp" / RECORDS), (folder / "runs" / "dp" / "summary.csv").read_text()


def test_two_gloo_processes_write_what_one_process_writes(tmp_path, tiny_model_dir, reference):
    records, summary = reference
    _write_config(tmp_path, tiny_model_dir)
    out = _torchrun(2, tmp_path, tiny_model_dir).stdout
    folder = tmp_path / "runs" / "dp"
    assert out.count("writing to runs/dp/ (a new run of 48 records, over 2 processes)\n") == 1  # rank 0 alone reports
    assert out.count("records, summary and plots in runs/dp/") == 1  # and writes the tables
    merged = load_records(folder / RECORDS)
    assert _content(merged) == _content(records)  # same records, in the order one process writes them
    assert (folder / "summary.csv").read_text() == summary
    assert not list(folder.glob("samples.rank*"))  # merged, then deleted
    assert json.loads((folder / "environment.json").read_text())["processes"] == 2
    assert (folder / "command.txt").read_text().startswith("torchrun --nproc-per-node 2 tools/run_eval.py --config dp.yaml")

    _write_config(tmp_path, tiny_model_dir, samples=SAMPLES + 1)
    refused = _torchrun(2, tmp_path, tiny_model_dir, check=False)
    assert refused.returncode != 0
    log = refused.stdout + refused.stderr
    for rank in (0, 1):  # every rank stops with rank 0's error, before loading the model
        assert f"[rank{rank}]: experiments.fingerprint.RunMismatchError: runs/dp/ holds records of another run" in log, log
    assert log.count(f"samples: {SAMPLES} in the folder, {SAMPLES + 1} now") == 2
    assert load_records(folder / RECORDS) == merged

    fresh = _torchrun(2, tmp_path, tiny_model_dir, "--fresh").stdout
    assert fresh.count("--fresh: deleted the 48 records of runs/dp/\n") == 1
    assert "writing to runs/dp/ (a new run of 50 records, over 2 processes)" in fresh
    assert len(load_records(folder / RECORDS)) == 50 and not list(folder.glob("samples.rank*"))


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_a_killed_two_process_run_is_finished_by_one_process(tmp_path, monkeypatch, capsys, tiny_model_dir, reference):
    records, _ = reference
    _write_config(tmp_path, tiny_model_dir)
    folder = tmp_path / "runs" / "dp"
    proc = _torchrun(2, tmp_path, tiny_model_dir, popen=True)
    try:
        deadline = time.monotonic() + 120
        while sum(p.read_bytes().count(b"\n") for p in folder.glob("samples.rank*.jsonl")) < 4:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no records after 120 s"
            time.sleep(0.005)
        workers = _children(proc.pid)
        assert len(workers) == 2
        for pid in workers:  # SIGKILL both ranks: a machine that goes down mid-run
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0
    assert not (folder / RECORDS).exists()  # killed before the merge
    finished = len(read_records(folder))
    assert 4 <= finished < 2 * SAMPLES

    monkeypatch.chdir(tmp_path)
    for k in ("RRATTENTION_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(k, _env(tiny_model_dir)[k])
    capsys.readouterr()
    assert run_eval.main(["--config", "dp.yaml", "--no-progress"]) == 0  # one process, no torchrun
    assert capsys.readouterr().out.startswith(
        f"writing to runs/dp/ (resuming: {finished} of 48 records there, {48 - finished} to compute)\n")
    lines = [json.loads(line) for line in (folder / RECORDS).read_text().splitlines()]
    assert len(lines) == 48 and not list(folder.glob("samples.rank*"))  # none lost, none twice
    by_key = {runner.record_key(r): r for r in lines}
    assert _content([by_key[runner.record_key(r)] for r in records]) == _content(records)


def test_records_of_any_world_size_are_finished_by_two_processes(tmp_path, tiny_model_dir, reference):
    """A folder left by one process (samples.jsonl), by rank 0 of some run and by rank 3 of a run of
    four (one record also in samples.jsonl, a partial last line) is completed by two processes."""
    records, summary = reference
    _write_config(tmp_path, tiny_model_dir)
    folder = tmp_path / "runs" / "dp"
    folder.mkdir(parents=True)
    lines = [json.dumps(r, sort_keys=True) + "\n" for r in records]
    (folder / RECORDS).write_text("".join(lines[:10]))
    (folder / RANK_RECORDS.format(rank=0)).write_text("".join(lines[10:15]))
    (folder / RANK_RECORDS.format(rank=3)).write_text("".join([lines[3], *lines[20:23], lines[30][:20]]))
    out = _torchrun(2, tmp_path, tiny_model_dir).stdout
    assert "writing to runs/dp/ (resuming: 18 of 48 records there, 30 to compute, over 2 processes)" in out
    merged = [json.loads(line) for line in (folder / RECORDS).read_text().splitlines()]
    assert (folder / RECORDS).read_text().startswith("".join(lines[:15] + lines[20:23]))  # kept as written
    assert sorted(map(runner.record_key, merged)) == sorted(map(runner.record_key, records))  # each once
    assert sorted(_content(merged), key=runner.record_key) == sorted(_content(records), key=runner.record_key)
    assert (folder / "summary.csv").read_text() == summary and not list(folder.glob("samples.rank*"))


def test_a_cell_recorded_twice_counts_once_and_two_different_records_are_refused(tmp_path, context):
    cfg = EvalConfig.from_dict({"run_name": "dup", "methods": ["full", RR], "tasks": [{"name": "fidelity", "settings": {"last_tokens": 32}}],
                                "lengths": [256], "samples": 2, "output_dir": str(tmp_path)})
    records = run(cfg, progress=False, context=context)
    again = {**records[1], "seconds": records[1]["seconds"] + 1.0, "commit": "f" * 40}  # the same cell computed twice
    (cfg.run_dir / RANK_RECORDS.format(rank=1)).write_text(json.dumps(again) + "\n")
    assert read_records(cfg.run_dir) == records
    assert run(cfg, progress=False, context=context) == records and not (cfg.run_dir / RANK_RECORDS.format(rank=1)).exists()
    other = {**records[1], "delta_nll": records[1]["delta_nll"] + 1.0}
    (cfg.run_dir / RANK_RECORDS.format(rank=1)).write_text(json.dumps(other) + "\n")
    with pytest.raises(RecordConflictError) as err:
        run(cfg, progress=False, context=context)
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert f"method=rr task=fidelity length=256 sample=0 (in {RECORDS} and samples.rank1.jsonl; delta_nll: " in message
    assert "--fresh" in message
    run(cfg, progress=False, context=context, fresh=True)  # --fresh deletes conflicting records too
    assert len(load_records(cfg.run_dir / RECORDS)) == 4 and not (cfg.run_dir / RANK_RECORDS.format(rank=1)).exists()


def test_shards_are_disjoint_cover_the_cells_and_keep_a_sample_on_one_rank():
    methods, cells = ("full", "rr", "xa"), [(t, n, i) for t in ("copy", "fidelity") for n in (256, 512) for i in range(5)]
    todo = [(m, *c) for c in cells for m in methods if (m, *c) != ("rr", "copy", 256, 1)]  # one cell already done
    for world in (1, 2, 3, 7, 40):
        shards = [shard(todo, r, world) for r in range(world)]
        assert sorted(c for s in shards for c in s) == sorted(todo)
        assert all(s == [c for c in todo if c in s] for s in shards)  # each in the config's order
        owner = {c[1:]: r for r, s in enumerate(shards) for c in s}
        assert all(owner[c[1:]] == r for r, s in enumerate(shards) for c in s)  # a sample's methods on one rank
        samples = [len({c[1:] for c in s}) for s in shards]
        assert max(samples) - min(samples) <= 1
        assert all({c[2] for c in s} == {256, 512} for s in shards if len({c[1:] for c in s}) >= 2 * 2)
    assert shard(todo, 0, 2) == shard(list(todo), 0, 2)


def test_each_rank_takes_its_own_device():
    assert distributed.rank_device("cpu", 3, 0) == "cpu"
    assert distributed.rank_device("cuda", 1, 2) == "cuda:1"
    with pytest.raises(ValueError, match=r"LOCAL_RANK=2\) than it has GPUs \(2\): use --nproc-per-node 2 or fewer"):
        distributed.rank_device("cuda", 2, 2)


def test_the_launch_is_read_from_torchrun_s_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched() and distributed.launch_command() == "python"
    with distributed.join("cpu") as group:
        assert group is None  # without torchrun nothing is joined
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert distributed.launched() and distributed.launch_command() == "torchrun --nnodes 2 --nproc-per-node 4"


def test_rank_0_s_errors_reach_the_other_ranks_intact(tmp_path):
    err = RunMismatchError(tmp_path, ["samples: 2 in the folder, 3 now"], "Settings that differ:")
    copy = distributed._portable(err)
    assert type(copy) is RunMismatchError and str(copy) == str(err) and copy.differences == err.differences
    assert pickle.loads(pickle.dumps(err)).run_dir == tmp_path

    class Unpicklable(ValueError):
        def __init__(self, a, b):
            super().__init__(f"{a} and {b}")

    sent = distributed._portable(Unpicklable(1, 2))
    assert type(sent) is RuntimeError and str(sent) == "rank 0 stopped the run: Unpicklable: 1 and 2"
