"""Run an evaluation config and print its table.

    python tools/run_eval.py --config configs/quickstart.yaml

Writes ``<output_dir>/<run_name>/``: ``samples.jsonl`` (one record per sample, appended as it
finishes; rerunning skips what is there), ``config.yaml``, ``environment.json``, ``summary.csv``,
``table.md`` and one plot per task (score vs sparsity, score and sparsity vs length).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.config import EvalConfig  # noqa: E402
from experiments.runner import record_command, run, summarize  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, required=True, help="evaluation YAML (see configs/)")
    ap.add_argument("--output-dir", default=None, help="override the config's output_dir")
    ap.add_argument("--summarize-only", action="store_true", help="rebuild the tables and plots from the records")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    cfg = EvalConfig.from_yaml(args.config)
    if args.output_dir is not None:
        cfg = EvalConfig.from_dict({**cfg.to_dict(), "output_dir": args.output_dir})
    if args.summarize_only:
        from experiments.runner import RECORDS, load_records

        records = load_records(cfg.run_dir / RECORDS)
    else:
        record_command(cfg.run_dir, ["tools/run_eval.py", *(sys.argv[1:] if argv is None else argv)])
        records = run(cfg, progress=not args.no_progress)
    summary = summarize(cfg, records)
    print((cfg.run_dir / "table.md").read_text())
    print(f"records, summary and plots in {cfg.run_dir}/")
    return 0 if len(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
