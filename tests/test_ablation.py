"""Ablation grids: validation, expansion into methods, resumable runs through the harness, pivot."""

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from experiments.ablation import AblationConfig, pivot  # noqa: E402
from experiments.runner import run, summarize  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _ablation(tmp_path, **change):
    data = {
        "run_name": "abl", "method": "rrattention", "base": {"block_size": 32, "min_sparse_len": 0},
        "grid": {"stride": [4, 8], "tau": [0.5, 0.9]},
        "tasks": [{"name": "fidelity", "settings": {"last_tokens": 32}}], "lengths": [256], "samples": 2,
        "output_dir": str(tmp_path), **change,
    }
    return AblationConfig.from_dict(data)


def test_grid_expands_into_labelled_methods(tmp_path):
    ablation = _ablation(tmp_path)
    cfg = ablation.eval_config()
    assert [m.label for m in cfg.methods] == ["full", "stride=4,tau=0.5", "stride=4,tau=0.9", "stride=8,tau=0.5", "stride=8,tau=0.9"]
    assert cfg.methods[3].config().stride == 8 and cfg.methods[3].config().tau == 0.5 and cfg.methods[3].config().block_size == 32
    assert [m.label for m in _ablation(tmp_path, include_full=False).eval_config().methods][0] == "stride=4,tau=0.5"
    assert AblationConfig.from_dict(ablation.to_dict()) == ablation


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"grid": {}}, ValueError, "grid must map at least one"),
        ({"grid": {"strides": [4]}}, ValueError, "'strides' is not a rrattention setting"),
        ({"grid": {"stride": []}}, ValueError, r"grid\[stride\] must be a non-empty list"),
        ({"grid": {"stride": 8}}, ValueError, r"grid\[stride\] must be a non-empty list"),
        ({"grid": {"stride": [8, 8]}}, ValueError, "lists a value twice"),
        ({"grid": {"stride": [3]}}, ValueError, "block_size must be a multiple of stride"),
        ({"grid": {"tau": [1.5]}}, ValueError, r"tau must be in \(0, 1\]"),
        ({"grid": {"head_shift": ["diagonal"]}}, ValueError, "head_shift must be one of"),
        ({"base": {"block_size": 32, "stride": 8}}, ValueError, "appear in both base and grid"),
        ({"method": "minference"}, ValueError, "method must be one of"),
        ({"include_full": "yes"}, TypeError, "include_full must be a bool"),
        ({"methods": ["full"]}, ValueError, "has no 'methods'"),
        ({"samples": 0}, ValueError, "samples must be an int >= 1"),
    ],
)
def test_validation(tmp_path, change, error, message):
    with pytest.raises(error, match=message):
        _ablation(tmp_path, **change)


def test_repository_ablation_configs_load():
    paths = sorted(CONFIGS.glob("ablation_*.yaml"))
    assert {p.stem for p in paths} >= {"ablation_stride_tau", "ablation_head_shift", "ablation_selector", "ablation_block"}
    grids = {p.stem: AblationConfig.from_yaml(p).grid for p in paths}
    assert grids["ablation_stride_tau"] == {"stride": (4, 8, 16, 32), "tau": (0.8, 0.85, 0.9, 0.95, 0.99)}
    assert set(grids["ablation_head_shift"]["head_shift"]) == {"round_robin", "fixed", "random", "group_round_robin"}
    assert set(grids["ablation_selector"]["selector"]) == {"top_tau", "forced_first"}
    assert set(grids["ablation_block"]["block_size"]) == {64, 128}


def test_run_and_pivot(tmp_path, context):
    ablation = _ablation(tmp_path)
    cfg = ablation.eval_config()
    records = run(cfg, progress=False, context=context)
    assert len(records) == 5 * 2 and run(cfg, progress=False, context=context) == records  # resumed: nothing redone
    summary = summarize(cfg, records)
    table = pivot(ablation, summary)
    lines = table.splitlines()
    assert lines[0] == "### fidelity, 256 tokens: delta_nll (full attention: 0)"
    assert lines[2] == "| stride | tau=0.5 | tau=0.9 |"
    row = summary.set_index("method").loc["stride=8,tau=0.5"]
    assert lines[5] == f"| 8 | {row['score']:.4g} ({row['sparsity']:.2f}) | " + lines[5].split(" | ")[2]
    sparsity = summary.set_index("method")["sparsity"]
    assert sparsity["stride=4,tau=0.5"] > sparsity["stride=4,tau=0.9"]  # a lower τ keeps fewer blocks
