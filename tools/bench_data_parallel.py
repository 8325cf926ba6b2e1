"""Data-parallel evaluation throughput: one evaluation config run by one process and by
``torchrun --nproc-per-node N`` (one GPU per rank), each from scratch, timed end to end, with the
records of every run compared with the one-process run's.

    python tools/bench_data_parallel.py --config configs/fidelity_smollm2.yaml --processes 1 2 \\
        --samples 20 --out results/multigpu/h200

Each run writes ``<out>/runs/p<N>/<run_name>/`` (``--fresh``; N = 1 is plain ``python
tools/run_eval.py``, the path without torchrun). The wall time counts everything a user waits for:
process start, model load on every rank, the cells, rank 0's merge and tables. ``compute s`` is
the sum of the records' own ``seconds`` (the cells alone, over all ranks). ``equal records`` counts
the records equal to the one-process run's in every field but ``seconds``; ``max |diff|`` is the
largest difference of a numeric field over the others (GPUs of one kind running the same kernels
should give 0). ``--samples`` overrides the config's samples per cell (a shorter run; it is saved
in the table). Writes ``<out>/throughput.md`` and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.config import EvalConfig  # noqa: E402
from experiments.runner import PROVENANCE, load_records, record_key  # noqa: E402


def command(processes: int, config: Path, out: Path) -> list[str]:
    tool = [str(ROOT / "tools" / "run_eval.py"), "--config", str(config), "--output-dir", str(out), "--fresh", "--no-progress"]
    if processes == 1:
        return [sys.executable, *tool]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *tool]


def compare(records: list[dict], reference: list[dict]) -> tuple[int, float, int]:
    """(records equal to the reference's but for provenance, the largest numeric difference, records missing)."""
    ref = {record_key(r): r for r in reference}
    equal, worst, missing = 0, 0.0, len(set(ref) - {record_key(r) for r in records})
    for record in records:
        other = ref.get(record_key(record))
        if other is None:
            continue
        fields = {k for k in set(record) | set(other) if k not in PROVENANCE}
        if all(json.dumps(record.get(k)) == json.dumps(other.get(k)) for k in fields):
            equal += 1
            continue
        for k in fields:
            a, b = record.get(k), other.get(k)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
                if math.isfinite(a) and math.isfinite(b):
                    worst = max(worst, abs(a - b))
    return equal, worst, missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "fidelity_smollm2.yaml")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="world sizes to time; 1 is the reference")
    ap.add_argument("--samples", type=int, default=None, help="samples per cell instead of the config's")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if 1 not in args.processes or any(n < 1 for n in args.processes):
        raise ValueError(f"--processes must include 1 (the reference) and be >= 1, got {args.processes}")
    import torch

    args.out = args.out.resolve()
    data = yaml.safe_load(args.config.read_text())
    if args.samples is not None:
        data["samples"] = args.samples
    cfg = EvalConfig.from_dict(data)
    args.out.mkdir(parents=True, exist_ok=True)
    config = args.out / f"{cfg.run_name}.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    rows, reference = [], None
    for n in sorted(set(args.processes)):
        folder = args.out / "runs" / f"p{n}"
        start = time.perf_counter()
        done = subprocess.run(command(n, config, folder), capture_output=True, text=True)
        wall = time.perf_counter() - start
        (args.out / f"p{n}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise SystemExit(f"{n} process(es) failed (rc {done.returncode}); see {args.out / f'p{n}.log'}:\n{done.stderr[-3000:]}")
        records = load_records(folder / cfg.run_name / "samples.jsonl")
        reference = records if n == 1 else reference
        equal, worst, missing = compare(records, reference)
        rows.append((n, wall, len(records), sum(r["seconds"] for r in records), equal, worst, missing))

    base = rows[0][1]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    lines = [
        "# Data-parallel evaluation throughput", "",
        f"`python tools/bench_data_parallel.py {' '.join(map(shlex.quote, sys.argv[1:] if argv is None else argv))}`",
        f"({gpu}, {torch.cuda.device_count()} GPUs visible, torch {torch.__version__}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC); config `{args.config.name}` with "
        f"{cfg.samples} samples per cell, {len(cfg.methods)} methods, lengths {list(cfg.lengths)}.", "",
        "| processes | wall s | records | records/s | speed-up | compute s | equal records | max abs diff | missing |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, wall, count, compute, equal, worst, missing in rows:
        lines.append(f"| {n} | {wall:.1f} | {count} | {count / wall:.2f} | {base / wall:.2f}x | {compute:.1f} | "
                     f"{equal}/{count} | {worst:.3g} | {missing} |")
    table = "\n".join(lines) + "\n"
    (args.out / "throughput.md").write_text(table)
    print(table)
    return 0 if all(r[6] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
