"""Where runs go and when they resume: runs/ by default, a run folder resumed only by a run of the same
config fingerprint, --fresh, records counted per commit, and a kill -9 that loses and duplicates nothing."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("transformers")

from experiments import runner  # noqa: E402
from experiments.config import EvalConfig  # noqa: E402
from experiments.fingerprint import FINGERPRINT, RunMismatchError, weights_identity  # noqa: E402
from experiments.runner import RECORDS, load_records, run, summarize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import run_ablation  # noqa: E402
import run_eval  # noqa: E402

RR = {"name": "rrattention", "settings": {"block_size": 32, "stride": 4, "tau": 0.5, "min_sparse_len": 0}, "label": "rr"}
FIDELITY = {"name": "fidelity", "settings": {"last_tokens": 32}}


def _settings(**change):
    return {"run_name": "quickstart", "methods": ["full", RR], "tasks": [FIDELITY], "lengths": [256], "samples": 2, **change}


def _write_config(path: Path, **change) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(_settings(**change), sort_keys=False))
    return path


def _keys(path: Path) -> list[tuple]:
    return [(r["method"], r["task"], r["length"], r["sample"]) for r in map(json.loads, path.read_text().splitlines())]


@pytest.fixture
def loaded(monkeypatch, context):
    """The tools load the tiny model of ``context`` instead of SmolLM2; ``loaded`` lists the configs
    they asked to load."""
    calls = []

    def load_context(cfg, device):
        calls.append(cfg)
        return context

    monkeypatch.setattr(runner, "load_context", load_context)
    return calls


def test_make_eval_computes_into_runs_beside_committed_results(tmp_path, monkeypatch, capsys, loaded):
    """A fresh clone's `make eval` next to a committed results/quickstart/ whose records cover every cell
    of the config: the run writes runs/quickstart/ and computes, leaving results/ as it was."""
    recipe = (ROOT / "Makefile").read_text().split("\neval:", 1)[1].split("\n\n", 1)[0]
    assert "tools/run_eval.py --config configs/quickstart.yaml" in recipe and "--output-dir" not in recipe
    assert "output_dir" not in yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    config = _write_config(tmp_path / "configs" / "quickstart.yaml")
    committed = tmp_path / "results" / "quickstart"
    committed.mkdir(parents=True)
    (committed / "config.yaml").write_text(config.read_text())
    (committed / RECORDS).write_text("".join(
        json.dumps({"method": m, "task": "fidelity", "length": 256, "sample": i, "delta_nll": 9.0, "kl": 9.0, "sparsity": 0.0}) + "\n"
        for m in ("full", "rr") for i in range(2)))
    before = (committed / RECORDS).read_bytes()

    assert run_eval.main(["--config", "configs/quickstart.yaml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("writing to runs/quickstart/ (a new run of 4 records)\n")
    assert len(loaded) == 1  # the model was loaded: the run computed
    records = load_records(tmp_path / "runs" / "quickstart" / RECORDS)
    assert len(records) == 4 and all(r["delta_nll"] != 9.0 for r in records)
    fingerprint = json.loads((tmp_path / "runs" / "quickstart" / FINGERPRINT).read_text())["fingerprint"]
    assert {r["fingerprint"] for r in records} == {fingerprint} and all("commit" in r for r in records)
    assert (committed / RECORDS).read_bytes() == before
    assert (tmp_path / "runs" / "quickstart" / "command.txt").read_text() == \
        "python tools/run_eval.py --config configs/quickstart.yaml --no-progress\n"
    assert run_eval.main(["--config", "configs/quickstart.yaml", "--output-dir", "runs", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("writing to runs/quickstart/ (all 4 records there, nothing to compute)\n")
    assert len(loaded) == 1  # nothing computed, so the folder keeps the command line that computed it
    assert "--output-dir" not in (tmp_path / "runs" / "quickstart" / "command.txt").read_text()


def test_the_folder_is_printed_before_the_model_loads(tmp_path, monkeypatch, capsys, context):
    monkeypatch.chdir(tmp_path)
    printed = []
    monkeypatch.setattr(runner, "load_context", lambda cfg, device: printed.append(capsys.readouterr().out) or context)
    run(EvalConfig.from_dict(_settings(samples=1)), progress=False)
    assert printed == ["writing to runs/quickstart/ (a new run of 2 records)\n"]


@pytest.mark.parametrize("change, difference", [
    ({"lengths": [256, 320]}, "lengths: [256] in the folder, [256, 320] now"),
    ({"samples": 3}, "samples: 2 in the folder, 3 now"),
    ({"seed": 1}, "seed: 0 in the folder, 1 now"),
    ({"methods": ["full", {**RR, "settings": {**RR["settings"], "tau": 0.6}}]}, "methods.rr.settings.tau: 0.5 in the folder, 0.6 now"),
    ({"methods": ["full"]}, 'methods.rr: {"name": "rrattention", '),
    ({"tasks": [{"name": "fidelity", "settings": {"last_tokens": 16}}]}, "tasks: "),
    ({"dtype": "bfloat16"}, 'dtype: "float32" in the folder, "bfloat16" now'),
    ({"model": "/elsewhere/model"}, 'model: "smollm2" in the folder, "/elsewhere/model" now'),
])
def test_a_changed_setting_is_refused_naming_it(tmp_path, context, change, difference):
    cfg = EvalConfig.from_dict(_settings(output_dir=str(tmp_path)))
    run(cfg, progress=False, context=context)
    saved = {name: (cfg.run_dir / name).read_bytes() for name in (RECORDS, "config.yaml", FINGERPRINT)}
    changed = EvalConfig.from_dict(_settings(output_dir=str(tmp_path), **change))
    with pytest.raises(RunMismatchError) as err:
        run(changed, progress=False, context=context)
    message = str(err.value)
    assert isinstance(err.value, ValueError) and difference in message, message
    assert message.startswith(f"{cfg.run_dir}/ holds records of another run configuration")
    assert "--fresh" in message and "--output-dir" in message
    assert {name: (cfg.run_dir / name).read_bytes() for name in saved} == saved  # the refused run wrote nothing
    reordered = EvalConfig.from_dict(_settings(output_dir=str(tmp_path), methods=[RR, "full"]))
    assert len(run(reordered, progress=False, context=context)) == 4  # the order of methods decides no record


def test_a_folder_of_records_without_fingerprints_is_refused(tmp_path, context):
    cfg = EvalConfig.from_dict(_settings(output_dir=str(tmp_path)))
    run(cfg, progress=False, context=context)
    path = cfg.run_dir / RECORDS
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "fingerprint"}) + "\n" for r in load_records(path)))
    with pytest.raises(RunMismatchError, match="4 of its 4 records carry no config fingerprint"):
        run(cfg, progress=False, context=context)


def test_the_weights_of_a_local_model_are_identified_by_their_files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    weights = model / "model.safetensors"
    weights.write_bytes(bytes(3 << 20))
    (model / "config.json").write_text("{}")
    (model / "README.md").write_text("not a weight file")
    identity = weights_identity(str(model))
    assert [f["name"] for f in identity["files"]] == ["config.json", "model.safetensors"]
    with open(weights, "r+b") as fh:  # the last MiB changes
        fh.seek((3 << 20) - 1)
        fh.write(b"\x01")
    assert weights_identity(str(model)) != identity
    assert weights_identity("smollm2")["sha256"] == __import__("rrattention.assets").assets.SMOLLM2_SHA256


def test_fresh_starts_over(tmp_path, monkeypatch, capsys, loaded):
    monkeypatch.chdir(tmp_path)
    config = _write_config(tmp_path / "quickstart.yaml", tasks=[FIDELITY, {"name": "copy", "settings": {"passage_words": 6, "skip_words": 2}}],
                           samples=1)
    assert run_eval.main(["--config", str(config), "--no-progress"]) == 0
    folder = tmp_path / "runs" / "quickstart"
    (folder / "README.md").write_text("kept: not written by the harness")
    assert (folder / "copy.png").exists()
    _write_config(config, lengths=[256, 320], samples=1)
    with pytest.raises(RunMismatchError, match=r"lengths: \[256\] in the folder, \[256, 320\] now"):
        run_eval.main(["--config", str(config), "--no-progress"])
    capsys.readouterr()
    assert run_eval.main(["--config", str(config), "--no-progress", "--fresh"]) == 0
    assert capsys.readouterr().out.startswith("--fresh: deleted the 4 records of runs/quickstart/\n"
                                              "writing to runs/quickstart/ (a new run of 4 records)\n")
    records = load_records(folder / RECORDS)
    assert sorted(_keys(folder / RECORDS)) == sorted((m, "fidelity", n, 0) for m in ("full", "rr") for n in (256, 320))
    assert len({r["fingerprint"] for r in records}) == 1
    assert not (folder / "copy.png").exists() and (folder / "README.md").exists()  # the old task's plot went with its records
    with pytest.raises(SystemExit):
        run_eval.main(["--config", str(config), "--fresh", "--summarize-only"])


def test_an_ablation_is_refused_before_its_grid_is_rewritten_and_takes_fresh(tmp_path, monkeypatch, loaded):
    monkeypatch.chdir(tmp_path)
    spec = {"run_name": "abl", "base": {"block_size": 32, "min_sparse_len": 0}, "grid": {"tau": [0.5, 0.9]},
            "tasks": [FIDELITY], "lengths": [256], "samples": 1}
    config = tmp_path / "abl.yaml"
    config.write_text(yaml.safe_dump(spec))
    assert run_ablation.main(["--config", str(config), "--no-progress"]) == 0
    grid = (tmp_path / "runs" / "abl" / "ablation.yaml").read_text()
    config.write_text(yaml.safe_dump({**spec, "grid": {"tau": [0.5, 0.8]}}))
    with pytest.raises(RunMismatchError, match="methods.tau=0.9: "):
        run_ablation.main(["--config", str(config), "--no-progress"])
    assert (tmp_path / "runs" / "abl" / "ablation.yaml").read_text() == grid
    assert run_ablation.main(["--config", str(config), "--no-progress", "--fresh"]) == 0
    assert "0.8" in (tmp_path / "runs" / "abl" / "ablation.yaml").read_text()


def test_records_of_two_commits_are_counted_in_the_header(tmp_path, monkeypatch, context):
    cfg = EvalConfig.from_dict(_settings(output_dir=str(tmp_path), samples=3))
    monkeypatch.setenv("RRATTENTION_GIT_COMMIT", "a" * 40)
    run(cfg, progress=False, context=context)
    path = cfg.run_dir / RECORDS
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:2]))  # killed after two records
    monkeypatch.setenv("RRATTENTION_GIT_COMMIT", "b" * 40)
    records = run(cfg, progress=False, context=context)
    summarize(cfg, records, plots=False)
    assert "\nRecords: 6, from git bbbbbbbbbb (4), git aaaaaaaaaa (2).\n" in (cfg.run_dir / "table.md").read_text()
    legacy = [{k: v for k, v in r.items() if k != "commit"} for r in records]
    summarize(cfg, legacy, plots=False)  # environment.json names the last session's commit
    assert ("\nRecords: 6, from git bbbbbbbbbb (6, per environment.json: these records predate per-record commits).\n"
            in (cfg.run_dir / "table.md").read_text())


# ------------------------------------------------------------------ kill -9 of a real process


def test_kill_9_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_model_dir):
    samples = 15
    config = _write_config(tmp_path / "killed.yaml", run_name="killed", model=str(tiny_model_dir / "model"), samples=samples)
    command = [sys.executable, str(ROOT / "tools" / "run_eval.py"), "--config", str(config), "--no-progress"]
    env = {**os.environ, "RRATTENTION_CACHE": str(tiny_model_dir / "cache"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    records = tmp_path / "runs" / "killed" / RECORDS
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (records.exists() and records.read_text().count("\n") >= 3):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no records after 120 s"
            time.sleep(0.005)
        proc.kill()  # SIGKILL: no handler runs, the file is left as the kill finds it
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9
    before = records.read_bytes()
    finished = before.count(b"\n")
    assert 3 <= finished < 2 * samples  # killed mid-run, not after it finished
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"writing to runs/killed/ (resuming: {finished} of {2 * samples} records there" in rerun.stdout
    keys = _keys(records)
    assert len(keys) == len(set(keys)) == 2 * samples  # none lost, none twice
    assert set(keys) == {(m, "fidelity", 256, i) for m in ("full", "rr") for i in range(samples)}
    assert records.read_bytes().startswith(before[: before.rfind(b"\n") + 1])  # the finished records were kept as written
