"""tools/make_tables.py: every table, figure and README block rebuilt from results alone."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from experiments.ablation import SPEC, AblationConfig  # noqa: E402
from experiments.config import EvalConfig  # noqa: E402
from experiments.report import build  # noqa: E402
from experiments.runner import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import make_tables  # noqa: E402

RR = {"block_size": 32, "min_sparse_len": 0}
TASKS = [{"name": "fidelity", "settings": {"last_tokens": 32}}, {"name": "copy", "settings": {"passage_words": 6, "skip_words": 2}}]


def test_committed_tables_are_current():
    """What results/ and the README show is what the committed records rebuild to."""
    assert make_tables.check(ROOT / "results", ROOT / "README.md") == []


@pytest.fixture(scope="module")
def results(tmp_path_factory, context):
    out = tmp_path_factory.mktemp("results")
    main = EvalConfig.from_dict({"run_name": "fidelity_smollm2", "output_dir": str(out), "lengths": [256, 384], "samples": 2,
                                 "methods": ["full", {"name": "rrattention", "settings": {**RR, "stride": 4, "tau": 0.5}, "label": "rr"}],
                                 "tasks": TASKS})
    run(main, progress=False, context=context)
    ablation = AblationConfig.from_dict({"run_name": "ablation_stride_tau", "output_dir": str(out), "lengths": [256], "samples": 2,
                                         "base": RR, "grid": {"stride": [4, 8], "tau": [0.5, 0.9]}, "tasks": TASKS})
    run(ablation.eval_config(), progress=False, context=context)
    import yaml

    (out / "ablation_stride_tau" / SPEC).write_text(yaml.safe_dump(ablation.to_dict()))
    heat = EvalConfig.from_dict({"run_name": "attention_smollm2", "output_dir": str(out), "lengths": [256], "samples": 2,
                                 "methods": [{"name": "rrattention", "settings": {**RR, "stride": 4, "tau": 0.5}}],
                                 "tasks": [{"name": "attention_fidelity", "settings": {"layers": "all"}}]})
    run(heat, progress=False, context=context)
    (out / "prefill" / "h100").mkdir(parents=True)
    (out / "prefill" / "h100" / "bench_prefill.csv").write_text(
        "L,sdpa_ttft_ms,rrattention_ttft_ms,speedup,sparsity\n8192,20.0,40.0,0.5,0.6\n32768,130.0,100.0,1.3,0.7\n")
    return out


def test_build_writes_every_table_figure_and_readme_block(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- make_tables: main -->\nold\n<!-- /make_tables -->\nmiddle\n"
                      "<!-- make_tables: ablations -->\n<!-- /make_tables -->\n<!-- make_tables: kernels -->\nkept\n<!-- /make_tables -->\n")
    written = build(results, readme)
    for name in ("tables/main_comparison.md", "tables/ablations.md", "tables/kernels.md", "figures/pareto.png",
                 "figures/sparsity_vs_length.png", "figures/sparsity_heatmap.png", "figures/kernel_speedup.png",
                 "figures/ablation_stride_tau.png", "ablation_stride_tau/ablation.md", "fidelity_smollm2/summary.csv"):
        assert (results / name).exists(), name
    assert results / "tables" / "main_comparison.md" in written
    main = (results / "tables" / "main_comparison.md").read_text()
    assert "python tools/run_eval.py --config configs/fidelity_smollm2.yaml" in main and "| rr | block_size=32, stride=4, tau=0.5 |" in main
    text = readme.read_text()
    assert text.startswith("intro\n<!-- make_tables: main -->\nSmolLM2 on an H100") and "old" not in text
    assert "#### copy, 256 tokens: accuracy" in text and "| stride | tau=0.5 | tau=0.9 |" in text
    assert "<!-- make_tables: kernels -->\nkept\n" in text  # no kernel benchmark among the inputs: left as it was
    ablations = (results / "tables" / "ablations.md").read_text()
    assert "python tools/run_ablation.py --config configs/ablation_stride_tau.yaml" in ablations

    assert make_tables.check(results, readme) == []  # a rebuild changes nothing
    assert build(results, readme) == written
    table = results / "fidelity_smollm2" / "table.md"
    table.write_text(table.read_text().replace("| full", "| fuller", 1))
    readme.write_text(readme.read_text().replace("SmolLM2 on an H100", "SmolLM2 on a TPU"))
    assert sorted(make_tables.check(results, readme)) == ["README.md", f"{results.name}/fidelity_smollm2/table.md"]
