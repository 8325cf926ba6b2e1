"""Run every (method × task × length × sample) cell of an :class:`EvalConfig`, resumably.

Each finished sample is one JSON line appended to ``samples.jsonl`` and flushed to disk before the
next starts. A line cut short by a kill is removed when the run resumes, and samples already
recorded are skipped: killing the process at any point loses nothing and duplicates nothing.

Under ``torchrun`` (:mod:`experiments.distributed`) rank 0 decides what is left to compute and
every rank takes every ``world_size``-th of the samples with missing cells (all their missing
methods); each appends to its own
``samples.rank<r>.jsonl``, and rank 0 merges them into ``samples.jsonl`` once all are done. Every
record file of the folder counts when a run starts, so a run killed at any world size is resumed
at any other.

A run folder is resumed only by a run of the same settings: every record carries the config
fingerprint of :mod:`experiments.fingerprint` and the git commit that computed it; a run of other
settings is refused with :class:`~experiments.fingerprint.RunMismatchError` (``fresh=True``, the
tools' ``--fresh``, deletes the old records first).
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import platform
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

from . import distributed, fingerprint
from .config import EvalConfig, task_instances

RECORDS = "samples.jsonl"
RANK_RECORDS = "samples.rank{rank}.jsonl"  # a data-parallel rank's own file, merged into RECORDS by rank 0
COMMAND = "command.txt"  # the command line that produced the run, written by the tools
# Fields that say how a record was computed, not what: two records of one cell that differ only
# there are one record computed twice.
PROVENANCE = ("seconds", "commit")


class RecordConflictError(ValueError):
    """A run folder holds two different records of one (method, task, length, sample) cell."""


def record_key(record: dict) -> tuple:
    return record["method"], record["task"], record["length"], record["sample"]


def record_files(run_dir: Path) -> list[Path]:
    """The record files of ``run_dir`` that exist: ``samples.jsonl``, then the ranks' files by rank."""
    ranks = []
    for path in run_dir.glob(RANK_RECORDS.format(rank="*")):
        rank = path.name[len("samples.rank"):-len(".jsonl")]
        if rank.isdigit():
            ranks.append((int(rank), path))
    main = [run_dir / RECORDS] if (run_dir / RECORDS).exists() else []
    return main + [path for _, path in sorted(ranks)]


def _read_lines(path: Path) -> list[dict]:
    """The complete lines of ``path``; a trailing partial line (the process died while writing) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(len(complete))
    return [json.loads(line) for line in complete.decode("utf-8").splitlines()]


def _unique(sourced: list[tuple[Path, dict]], where: Path) -> list[dict]:
    """One record per cell, in first-seen order; a second record of a cell must be the first one
    computed again (equal but for :data:`PROVENANCE`), else :class:`RecordConflictError`."""
    first: dict[tuple, tuple[Path, dict, str]] = {}
    records = []
    for path, record in sourced:
        key = record_key(record)
        content = json.dumps({k: v for k, v in record.items() if k not in PROVENANCE}, sort_keys=True)
        if key not in first:
            first[key] = (path, record, content)
            records.append(record)
        elif first[key][2] != content:
            other_path, other, _ = first[key]
            fields = sorted(k for k in set(record) | set(other) if k not in PROVENANCE and record.get(k) != other.get(k))
            shown = "; ".join(f"{k}: {json.dumps(other.get(k))} vs {json.dumps(record.get(k))}" for k in fields)
            raise RecordConflictError(
                f"{where}: two different records of the cell method={key[0]} task={key[1]} length={key[2]} sample={key[3]} "
                f"(in {other_path.name} and {path.name}; {shown}). Every cell is computed once, so two runs wrote into this "
                "folder at the same time; start over with --fresh, or write elsewhere with --output-dir DIR.")
    return records


def load_records(path: Path) -> list[dict]:
    """Records of one file ``path``, one per cell; a trailing partial line is cut off."""
    return _unique([(path, r) for r in _read_lines(path)], path)


def read_records(run_dir: Path) -> list[dict]:
    """All records of a run folder: ``samples.jsonl``'s, then those only the ranks' files hold (each
    file's partial last line cut off), one per cell; :class:`RecordConflictError` if two differ."""
    return _unique([(path, r) for path in record_files(run_dir) for r in _read_lines(path)], run_dir)


def merge(run_dir: Path, order: list[tuple] = ()) -> list[dict]:
    """Append the records that only the ranks' files hold to ``samples.jsonl`` (by their cell's
    place in ``order``, unknown cells last), delete the ranks' files, and return all records.

    ``samples.jsonl``'s own lines stay as written; a kill before the ranks' files are deleted leaves
    records that are in both, which the next read counts once."""
    records = read_records(run_dir)
    ranks = record_files(run_dir)[(run_dir / RECORDS).exists():]
    if not ranks:
        return records
    kept = {record_key(r) for r in load_records(run_dir / RECORDS)}
    place = {key: i for i, key in enumerate(order)}
    new = sorted((r for r in records if record_key(r) not in kept), key=lambda r: place.get(record_key(r), len(place)))
    with open(run_dir / RECORDS, "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in new)
        fh.flush()
        os.fsync(fh.fileno())
    for path in ranks:
        path.unlink()
    return load_records(run_dir / RECORDS)


def append_record(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def git_commit() -> str | None:
    """The commit of the code that runs: ``RRATTENTION_GIT_COMMIT``, else ``git rev-parse HEAD`` of this
    checkout (not of the working directory), else None."""
    # A copy of the tree sent to another host (a GPU machine) may lack .git or carry a stale one: the
    # sender names the commit it sent in RRATTENTION_GIT_COMMIT.
    commit = os.environ.get("RRATTENTION_GIT_COMMIT")
    if commit:
        return commit
    try:
        return subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def environment(device: str, commit: str | None) -> dict:
    import torch
    import transformers

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else platform.processor() or "cpu",
        "git_commit": commit,
    }


def resolve_device(device: str) -> str:
    import torch

    return device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str, device: str) -> str:
    return dtype if dtype != "auto" else ("float32" if device == "cpu" else "bfloat16")


def load_context(cfg: EvalConfig, device: str):
    """The model of ``cfg`` on ``device`` in a :class:`~experiments.base.ModelContext`, with the
    Shakespeare corpus as haystack."""
    import torch

    from rrattention import assets

    from .base import ModelContext

    dtype = getattr(torch, resolve_dtype(cfg.dtype, device))
    if any(getattr(t, "needs_processor", False) for t in task_instances(cfg).values()):
        if cfg.model == "smollm2":
            raise ValueError("model: a task that reads images or videos (videomme) needs a local vision-language "
                             "model directory, not the text-only smollm2")
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(cfg.model)
        model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=dtype).to(device).eval()
        return ModelContext(model, processor.tokenizer, torch.device(device), lambda: "", processor=processor)
    if cfg.model == "smollm2":
        tokenizer, model = assets.load_smollm2(device=device, dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype).to(device).eval()
    return ModelContext(model, tokenizer, torch.device(device), lambda: assets.corpus("shakespeare"))


def clear(run_dir: Path) -> None:
    """Delete a run folder's records and what was built from them (``--fresh``); other files stay."""
    files = record_files(run_dir)
    records = [r for path in files for r in _read_lines(path)]  # conflicting records go too: no check
    tasks = list(dict.fromkeys(r["task"] for r in records))
    built = [f"{task}.png" for task in tasks] + [f"{task}.md" for task in tasks]  # plots, task reports
    for path in files:
        path.unlink()
    for name in (fingerprint.FINGERPRINT, "summary.csv", "table.md", "environment.json", *built):
        (run_dir / name).unlink(missing_ok=True)
    print(f"--fresh: deleted the {len({record_key(r) for r in records})} records of {run_dir}/", flush=True)


def shard(todo: list[tuple], rank: int, world_size: int) -> list[tuple]:
    """The cells of ``todo`` (``(method, task, length, sample)`` keys, in the config's order) that rank
    ``rank`` of ``world_size`` computes: the samples with missing cells dealt out in order like cards,
    each with all of its missing methods (they share the sample's full-attention pass). Every length
    goes to every rank, and which rank computes a cell changes nothing in its record."""
    by_sample = list(dict.fromkeys(cell[1:] for cell in todo))
    mine = set(by_sample[rank::world_size])
    return [cell for cell in todo if cell[1:] in mine]


def run(cfg: EvalConfig, *, progress: bool = True, context=None, fresh: bool = False,
        files: dict[str, str] | None = None, group: distributed.Group | None = None) -> list[dict] | None:
    """Evaluate every missing cell of ``cfg``; returns all records of the run directory.

    Raises :class:`~experiments.fingerprint.RunMismatchError` before loading the model when the
    folder holds records of other settings; ``fresh`` deletes them first. ``files`` (name → text,
    the tools' command line) are written into the folder once it is known to take this run.
    ``context`` (a :class:`~experiments.base.ModelContext`) skips loading the model (tests).

    ``group`` (a data-parallel launch, :func:`experiments.distributed.join`): rank 0 makes every
    decision above and the others follow it (raising its error if it raised); each rank computes
    the missing cells of every ``world_size``-th sample on its own device into its own file, and after a barrier
    rank 0 merges the files and returns all records, the other ranks None.
    """
    import yaml
    from tqdm import tqdm

    run_dir = cfg.run_dir
    device = context.device.type if context is not None else group.device if group else resolve_device(cfg.device)
    fields = fingerprint.settings(cfg, resolve_dtype(cfg.dtype, device))
    tasks = task_instances(cfg)
    methods = {m.label: m for m in cfg.methods}
    cells = [(m.label, t.name, n, i) for t in tasks.values() for n in cfg.lengths for i in range(cfg.samples) for m in cfg.methods]
    processes = f", over {group.world_size} processes" if group else ""

    def decide() -> list[tuple]:
        """What is left to compute; prepares the folder for it (rank 0 or the only process)."""
        if fresh:
            clear(run_dir)
        existing = read_records(run_dir)
        fingerprint.check_resumable(run_dir, existing, fields)
        done = {record_key(r) for r in existing}
        todo = [cell for cell in cells if cell not in done]
        if not todo:
            state = f"all {len(done)} records there, nothing to compute"
        elif done:
            state = f"resuming: {len(done)} of {len(done) + len(todo)} records there, {len(todo)} to compute{processes}"
        else:
            state = f"a new run of {len(todo)} records{processes}"
        print(f"writing to {run_dir}/ ({state})", flush=True)
        merge(run_dir, cells)  # the ranks' files of a killed data-parallel run, so that each rank starts its own anew
        if todo:  # a folder with nothing left to compute keeps the files of the runs that computed it
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            fingerprint.save(run_dir, fields)
            for name, text in (files or {}).items():
                (run_dir / name).write_text(text)
        return todo

    todo = group.decide(decide) if group else decide()
    rank, world = (group.rank, group.world_size) if group else (0, 1)
    share = shard(todo, rank, world)
    records_path = run_dir / (RANK_RECORDS.format(rank=rank) if group else RECORDS)
    if share:
        if context is None:
            context = load_context(cfg, group.device if group else device)
        commit = git_commit()
        stamp = {"fingerprint": fingerprint.fingerprint(fields), "commit": commit}
        if rank == 0:
            env = environment(str(context.device), commit)
            (run_dir / "environment.json").write_text(json.dumps({**env, **({"processes": world} if group else {})}, indent=2) + "\n")
        samples: dict = {}
        desc = cfg.run_name + (f" (rank 0 of {world})" if group else "")
        bar = tqdm(share, desc=desc, disable=not progress or rank != 0)
        for label, task_name, length, index in bar:
            task, method = tasks[task_name], methods[label]
            if (task.name, length) not in samples:
                samples = {(task.name, length): task.make_samples(context, length, cfg.samples, cfg.seed)}
            bar.set_postfix_str(f"{method.label} {task.name} L={length} #{index}")
            context.use_method(method.config())
            context.take_dense_fraction()
            start = time.perf_counter()
            metrics = task.evaluate(context, samples[(task.name, length)][index])
            seconds = round(time.perf_counter() - start, 3)
            dense = context.take_dense_fraction()
            append_record(records_path, {
                "method": method.label, "task": task.name, "length": length, "sample": index, "seconds": seconds,
                **metrics, **({} if dense is None else {"dense_calls": round(dense, 4)}), **stamp,
            })
    if group is None:
        return load_records(run_dir / RECORDS)
    group.barrier()  # every rank's file is complete and on disk
    return merge(run_dir, cells) if group.is_main else None


def summarize(cfg: EvalConfig, records: list[dict], *, plots: bool = True):
    """``summary.csv``, ``table.md`` and (``plots``) one figure per task in the run directory;
    returns the summary frame.

    Sparsity: per sample, the mean over layers of each layer's prefill sparsity (spec §6); per
    cell, the mean over samples. Scores as % of full: the cell's mean over the mean of the method
    ``full`` on the same task and length (tasks whose metric is higher-is-better).
    """
    import pandas as pd

    run_dir = cfg.run_dir
    tasks = task_instances(cfg)
    frame = pd.DataFrame(records)
    if frame.empty:
        raise ValueError(f"{run_dir}: no records to summarise")
    rows = []
    full_label = next((m.label for m in cfg.methods if m.name == "full"), None)
    for (method, task_name, length), group in frame.groupby(["method", "task", "length"], sort=False):
        task = tasks[task_name]
        metric = task.primary_metric
        row = {"method": method, "task": task_name, "length": length, "n": len(group), "metric": metric,
               "score": group[metric].mean(), "score_std": group[metric].std(ddof=0), "sparsity": group["sparsity"].mean()}
        for extra in ("kl", "nll", "nll_full", "dense_calls", "visual_tokens", "text_tokens", "prefill_tokens"):
            if extra in group:
                row[extra] = group[extra].mean()
        if full_label is not None and task.higher_is_better:
            full = frame[(frame.method == full_label) & (frame.task == task_name) & (frame.length == length)][metric]
            row["pct_of_full"] = 100.0 * row["score"] / full.mean() if len(full) and full.mean() else np.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    order = {m.label: i for i, m in enumerate(cfg.methods)}
    summary = summary.sort_values(["task", "length", "method"], key=lambda c: c.map(order) if c.name == "method" else c)
    summary.to_csv(run_dir / "summary.csv", index=False)
    dense_note = _all_dense_note(summary, {m.label for m in cfg.methods if m.name != "full"})
    if dense_note:
        warnings.warn(dense_note, stacklevel=2)
    env = json.loads((run_dir / "environment.json").read_text()) if (run_dir / "environment.json").exists() else {}
    header = (f"# {cfg.run_name}\n\nProduced by `{command(run_dir)}`.\n"
              f"Model `{cfg.model}`, {env.get('device', '?')}, torch {env.get('torch', '?')}, "
              f"{env.get('date', '?')}; seed {cfg.seed}, {per_cell(cfg.samples)}.\n"
              f"Records: {len(records)}, from {commit_counts(records, env)}.\n"
              "Sparsity: per sample the mean over layers of the prefill sparsity (spec §6), then the mean over samples.\n\n")
    (run_dir / "table.md").write_text(header + summary.to_markdown(index=False, floatfmt=".4g") + "\n"
                                      + (f"\n**Warning:** {dense_note}\n" if dense_note else ""))
    for task in tasks.values():  # a task's own breakdown (Video-MME: by duration, domain, task type)
        report = task.report(records, full_label) if hasattr(task, "report") else ""
        if report:
            (run_dir / f"{task.name}.md").write_text(report)
    if plots:
        _plots(summary, run_dir, {name: getattr(t, "length_unit", "tokens") for name, t in tasks.items()})
    return summary


def _all_dense_note(summary, sparse_methods: set[str]) -> str | None:
    """A warning naming the cells where a sparse method ran every prefill call dense, else None."""
    if "dense_calls" not in summary:
        return None
    dense = summary[summary.method.isin(sparse_methods) & (summary.dense_calls >= 1.0)]
    if dense.empty:
        return None
    cells = ", ".join(f"{r.method} {r.task} L={r.length}" for r in dense.itertuples())
    return (f"every prefill attention call ran dense in {cells}: a dense policy of spec §6 applied, most often "
            "min_sparse_len (calls with fewer keys run dense; default: the measured crossover, rrattention.crossover). "
            "Set min_sparse_len: 0 in the "
            "method's settings to evaluate it sparse at these lengths.")


def per_cell(samples: int) -> str:
    return f"{samples} sample{'s' if samples != 1 else ''} per cell"


def commit_counts(records: list[dict], env: dict) -> str:
    """``"git abc1234567 (8), git def4567890 (4)"``: the commits that computed ``records``, most records first.
    Records from before each record carried its commit are counted under the commit of the run's
    ``environment.json`` (its last session's), and say so."""
    parts = []
    for commit, n in collections.Counter(r.get("commit") for r in records).most_common():
        if commit is None and env.get("git_commit"):
            parts.append(f"git {env['git_commit'][:10]} ({n}, per environment.json: these records predate per-record commits)")
        elif commit is None:
            parts.append(f"an unrecorded commit ({n})")
        else:
            parts.append(f"git {commit[:10]} ({n})")
    return ", ".join(parts)


def command(run_dir: Path) -> str:
    """The command that produced ``run_dir``: as recorded, else the one its config file's name implies."""
    if (run_dir / COMMAND).exists():
        return (run_dir / COMMAND).read_text().strip()
    tool = "run_ablation" if (run_dir / "ablation.yaml").exists() else "run_eval"
    return f"python tools/{tool}.py --config configs/{run_dir.name}.yaml"


def cli_parser(description: str, config_help: str):
    """The command line ``tools/run_eval.py`` and ``tools/run_ablation.py`` share."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", type=Path, required=True, help=config_help)
    ap.add_argument("--output-dir", default=None,
                    help="write <output-dir>/<run_name>/ instead of the config's output_dir (default runs/); "
                         "--output-dir results refreshes the committed reference results")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--fresh", action="store_true",
                      help="delete the run folder's records (and the tables and plots built from them) and start over")
    mode.add_argument("--summarize-only", action="store_true", help="rebuild the tables and plots from the records")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def records_for_cli(cfg: EvalConfig, args, tool: str, argv: list[str] | None,
                    files: dict[str, str] | None = None) -> list[dict] | None:
    """The run's records for a tool's parsed ``args``: read back (``--summarize-only``), or run,
    writing the command line (the launcher, ``tool``, then ``argv``, default ``sys.argv[1:]``) to
    ``command.txt`` and ``files`` (name → text) into the run folder once it is known to take this run.

    Under torchrun the processes join a group (:func:`experiments.distributed.join`) and run the
    cells data-parallel; rank 0 returns the records and every other rank None (rank 0 alone
    writes the tables)."""
    import shlex
    import sys

    if args.summarize_only:
        return read_records(cfg.run_dir) if int(os.environ.get("RANK", "0")) == 0 else None
    command_line = (distributed.launch_command() + " "
                    + " ".join(map(shlex.quote, [tool, *(sys.argv[1:] if argv is None else argv)])) + "\n")
    with distributed.join(resolve_device(cfg.device)) as group:
        return run(cfg, progress=not args.no_progress, fresh=args.fresh, files={COMMAND: command_line, **(files or {})},
                   group=group)


def _plots(summary, run_dir: Path, units: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task, frame in summary.groupby("task"):
        unit = units.get(task, "tokens")
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for method, rows in frame.groupby("method", sort=False):
            axes[0].plot(rows["sparsity"], rows["score"], "o", label=method)
            for _, r in rows.iterrows():
                label = f"{r['length'] // 1024}K" if unit == "tokens" else f"{r['length']} {unit}"
                axes[0].annotate(label, (r["sparsity"], r["score"]), fontsize=7)
            axes[1].plot(rows["length"], rows["score"], "o-", label=method)
            axes[2].plot(rows["length"], rows["sparsity"], "o-", label=method)
        metric = frame["metric"].iloc[0]
        axes[0].set(xlabel="sparsity", ylabel=metric, title=f"{task}: {metric} vs sparsity (Pareto)")
        axes[1].set(xscale="log", xlabel=unit, ylabel=metric, title=f"{task}: {metric} vs length")
        axes[2].set(xscale="log", xlabel=unit, ylabel="sparsity", title=f"{task}: sparsity vs length")
        for ax in axes:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run_dir / f"{task}.png", dpi=110)
        plt.close(fig)
