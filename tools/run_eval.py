"""Run an evaluation config and print its table.

    python tools/run_eval.py --config configs/quickstart.yaml

Writes ``<output_dir>/<run_name>/``: ``runs/<run_name>/`` (git-ignored) unless ``--output-dir`` or
the config's ``output_dir`` says otherwise; ``--output-dir results`` refreshes the committed reference
results. The folder gets ``samples.jsonl`` (one record per sample, appended as it finishes),
``config.yaml``, ``fingerprint.json`` (the settings that decide the records), ``command.txt``,
``environment.json``, ``summary.csv``, ``table.md`` and one plot per task (score vs sparsity, score
and sparsity vs length).

Rerunning the same config resumes: finished samples are skipped. A folder whose records were
computed with other settings (methods, tasks, lengths, samples, seed, model or its weights, dtype)
is refused with an error naming the differences; ``--fresh`` deletes its records and starts over.

Data parallel, one process per GPU (gloo processes on CPU): ``torchrun --standalone
--nproc-per-node N tools/run_eval.py --config ...``. Each rank computes its share of the missing
samples into ``samples.rank<r>.jsonl``; rank 0 merges them into ``samples.jsonl`` and writes the
tables. A run killed at one world size resumes at any other, or without torchrun.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.config import EvalConfig  # noqa: E402
from experiments.runner import cli_parser, records_for_cli, summarize  # noqa: E402


def main(argv=None) -> int:
    args = cli_parser(__doc__.split("\n\n")[0], "evaluation YAML (see configs/)").parse_args(argv)
    cfg = EvalConfig.from_yaml(args.config)
    if args.output_dir is not None:
        cfg = EvalConfig.from_dict({**cfg.to_dict(), "output_dir": args.output_dir})
    records = records_for_cli(cfg, args, "tools/run_eval.py", argv)
    if records is None:  # a data-parallel rank other than 0: rank 0 merges and writes the tables
        return 0
    summary = summarize(cfg, records)
    print((cfg.run_dir / "table.md").read_text())
    print(f"records, summary and plots in {cfg.run_dir}/")
    return 0 if len(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
