"""Run an ablation grid over the evaluation harness and print its pivot table.

    python tools/run_ablation.py --config configs/ablation_stride_tau.yaml

Writes ``<output_dir>/<run_name>/`` (``runs/<run_name>/`` unless ``--output-dir`` or the config says
otherwise): what ``run_eval.py`` writes (records, summary, table, plots; one method per grid point),
``ablation.yaml`` (the grid) and ``ablation.md`` (the pivot: first grid axis down, the others across,
``score (sparsity)`` per cell). Rerunning with the same settings skips finished samples; other
settings are refused unless ``--fresh`` (see ``run_eval.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.ablation import SPEC, AblationConfig, write_pivot  # noqa: E402
from experiments.runner import cli_parser, records_for_cli, summarize  # noqa: E402


def main(argv=None) -> int:
    args = cli_parser(__doc__.split("\n\n")[0], "ablation YAML (configs/ablation_*.yaml)").parse_args(argv)
    ablation = AblationConfig.from_yaml(args.config)
    if args.output_dir is not None:
        ablation = AblationConfig.from_dict({**ablation.to_dict(), "output_dir": args.output_dir})
    cfg = ablation.eval_config()
    spec = yaml.safe_dump(ablation.to_dict(), sort_keys=False)
    records = records_for_cli(cfg, args, "tools/run_ablation.py", argv, files={SPEC: spec})
    if records is None:  # a data-parallel rank other than 0: rank 0 merges and writes the tables
        return 0
    summary = summarize(cfg, records)
    table = write_pivot(ablation, summary, cfg.run_dir)
    print(table)
    print(f"records, summary, pivot and plots in {cfg.run_dir}/")
    return 0 if len(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
