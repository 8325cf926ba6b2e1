"""Every table and figure of ``results/`` and the README, rebuilt from committed results only.

Inputs are the files the tools wrote: each evaluation run's ``config.yaml``, ``samples.jsonl`` and
``environment.json`` (plus ``ablation.yaml`` for ablations), and the benchmark CSVs under
``results/kernels/<gpu>/`` and ``results/prefill/<gpu>/``. Nothing is measured here. Outputs:

* per run: ``summary.csv``, ``table.md``, per-task plots, and ``ablation.md`` for ablations;
* ``results/tables/``: ``main_comparison.md`` (methods × lengths), ``ablations.md``, ``kernels.md``;
* ``results/figures/``: ``pareto.png``, ``sparsity_vs_length.png``, ``sparsity_heatmap.png``,
  ``kernel_speedup.png``, ``ablation_<name>.png``;
* the blocks between ``<!-- make_tables: NAME -->`` and ``<!-- /make_tables -->`` of the README and
  of ``results/README.md``.

Every table names its source files and the command that produced them; every figure carries the
same line at its foot. A missing input leaves its outputs out (and their README block untouched).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .ablation import SPEC, AblationConfig, point_label, write_pivot
from .config import EvalConfig
from .runner import RECORDS, command, per_cell, read_records, summarize

MAIN_RUN = "fidelity_smollm2"
HEATMAP_RUN = "attention_smollm2"
QUICKSTART_RUN = "quickstart"
CURRENT_GPU = "h200"  # the GPU whose benchmarks the README shows; older GPUs' folders stay as history
REGENERATE = "python tools/make_tables.py"
BLOCK = re.compile(r"(<!-- make_tables: (?P<name>[\w-]+) -->\n).*?(<!-- /make_tables -->)", re.S)


@dataclass
class Run:
    """One evaluation run directory, its config and its summary."""

    path: Path
    cfg: EvalConfig
    summary: pd.DataFrame
    records: list[dict]
    ablation: AblationConfig | None

    @property
    def name(self) -> str:
        return self.path.name

    def provenance(self) -> str:
        env = json.loads((self.path / "environment.json").read_text()) if (self.path / "environment.json").exists() else {}
        # The records' own commits where they carry them (a resumed run may span several), else the
        # commit of environment.json (records from before per-record commits).
        commits = list(dict.fromkeys(r.get("commit") for r in self.records))
        if None in commits:
            commits = [env["git_commit"]] if env.get("git_commit") else []
        commit = f", git {', '.join(c[:10] for c in commits)}" if commits else ""
        return (f"`results/{self.name}/` from `{command(self.path)}` ({env.get('device', '?')}, torch {env.get('torch', '?')}, "
                f"{str(env.get('date', '?'))[:10]}{commit})")

    def method_settings(self) -> dict[str, str]:
        """Label → its settings, without the ones every method of the run shares."""
        entries = {m.label: {k: v for k, v in m.settings.items() if k != "min_sparse_len"} for m in self.cfg.methods}
        return {label: ", ".join(f"{k}={v}" for k, v in s.items()) for label, s in entries.items()}


def load_runs(results: Path, *, plots: bool) -> dict[str, Run]:
    """Every run under ``results`` (a folder with ``config.yaml`` and ``samples.jsonl``), re-summarised."""
    runs = {}
    for path in sorted(p.parent for p in results.glob(f"*/{RECORDS}")):
        if not (path / "config.yaml").exists():
            continue
        data = yaml.safe_load((path / "config.yaml").read_text())
        cfg = EvalConfig.from_dict({**data, "output_dir": str(results)})
        records = read_records(path)
        summary = summarize(cfg, records, plots=plots)
        ablation = None
        if (path / SPEC).exists():
            ablation = AblationConfig.from_dict({**yaml.safe_load((path / SPEC).read_text()), "output_dir": str(results)})
            write_pivot(ablation, summary, path)
        runs[path.name] = Run(path, cfg, summary, records, ablation)
    return runs


def _ms(value: float) -> str:
    if value != value:  # not measured in that run (NaN)
        return "—"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _k(length: int) -> str:
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


def _cell(row, pct: bool) -> str:
    text = f"{row['score']:.4g}"
    if pct and pd.notna(row.get("pct_of_full")):
        text += f" ({row['pct_of_full']:.1f}%)"
    return text


def main_comparison(run: Run) -> str:
    """Per task: methods down, lengths across; each cell ``score (% of full) · sparsity``."""
    lines = [f"# Main comparison: every method against full attention\n", f"Source: {run.provenance()}; "
             f"{per_cell(run.cfg.samples)}. Cells: score (% of full) · sparsity (spec §6). Rebuilt by `{REGENERATE}`.\n"]
    settings = run.method_settings()
    for task, frame in run.summary.groupby("task", sort=True):
        metric = frame["metric"].iloc[0]
        lengths = sorted(frame["length"].unique())
        lines += [f"## {task}: {metric}\n", "| method | settings | " + " | ".join(_k(n) for n in lengths) + " |",
                  "|---|---|" + "---|" * len(lengths)]
        for method, rows in frame.groupby("method", sort=False):
            by_length = rows.set_index("length")
            cells = [f"{_cell(by_length.loc[n], True)} · {by_length.loc[n, 'sparsity']:.2f}" if n in by_length.index else "–"
                     for n in lengths]
            lines.append(f"| {method} | {settings.get(method, '')} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def readme_main(run: Run) -> str:
    """The README's summary of the main run at its longest length."""
    length = max(run.cfg.lengths)
    by = run.summary[run.summary.length == length].set_index(["task", "method"])
    tasks = sorted(by.index.get_level_values(0).unique())
    lines = [f"SmolLM2 on an H100, {per_cell(run.cfg.samples)} ({run.provenance()}), at {_k(length)} tokens:\n"]
    header = ["method", "settings"]
    for task in tasks:
        metric = by.loc[task]["metric"].iloc[0]
        header.append(f"{task} {metric}" + (" (% of full)" if by.loc[task]["pct_of_full"].notna().any() else ""))
        if task == "fidelity" and "kl" in by.columns:
            header.append("KL")
    header.append("sparsity")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    settings = run.method_settings()
    for method in dict.fromkeys(run.summary["method"]):
        cells = [method, settings.get(method, "")]
        for task in tasks:
            row = by.loc[(task, method)]
            cells.append(_cell(row, True))
            if task == "fidelity" and "kl" in by.columns:
                cells.append(f"{row['kl']:.3g}")
        cells.append(f"{by.loc[(tasks[0], method), 'sparsity']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def readme_wide(run: Run) -> str:
    """Methods down; every task × length score across, then the sparsity at the longest length."""
    s = run.summary
    length = max(run.cfg.lengths)
    columns = [(t, n) for t in sorted(s.task.unique()) for n in sorted(s.length.unique())]
    header = ["method"] + [f"{t} {_k(n)}" for t, n in columns] + [f"sparsity {_k(length)}"]
    by = s.set_index(["method", "task", "length"])
    lines = [f"Source: {run.provenance()}; {per_cell(run.cfg.samples)}.\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in dict.fromkeys(s["method"]):
        cells = [f"{by.loc[(method, t, n), 'score']:.4g}" if (method, t, n) in by.index else "–" for t, n in columns]
        sparsity = s[(s.method == method) & (s.length == length)]["sparsity"].mean()
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {sparsity:.2f} |")
    return "\n".join(lines) + "\n"


def ablation_tables(runs: list[Run], *, length: int | None = None) -> str:
    """Each ablation's pivot (optionally one length only) under its provenance."""
    parts = []
    for run in runs:
        table = (run.path / "ablation.md").read_text().split("\n\n", 2)[2]  # drop the title and header line
        if length is not None:
            sections = [s for s in table.split("### ") if s.strip() and f", {length} tokens:" in s.splitlines()[0]]
            table = "".join("#### " + s for s in sections)
        parts.append(f"### {run.name}\n\nSource: {run.provenance()}; {per_cell(run.cfg.samples)}; "
                     f"cells: score (sparsity).\n\n{table.replace('### ', '#### ') if length is None else table}")
    return "\n".join(parts)


def ablation_summary(runs: list[Run]) -> str:
    """Per ablation and value of its first grid axis, averaged over the other axes at the longest
    length: each task's score (as % of full where the task has it) and the sparsity (also averaged
    over tasks)."""
    lines = []
    for run in runs:
        length = max(run.cfg.lengths)
        first = next(iter(run.ablation.grid))
        s = run.summary[run.summary.length == length].set_index("method")
        panels = _task_axes(run.summary)
        header = [first] + [label for _, _, label in panels] + ["sparsity"]
        lines += [f"**{run.name}** ({_k(length)} tokens, mean over {', '.join(a for a in run.ablation.grid if a != first) or 'samples'}):\n",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for value in run.ablation.grid[first]:
            labels = run.ablation.labels_where(first, value)
            cells = [str(value)]
            for task, column, _ in panels:
                rows = s[s.task == task].reindex(labels)
                cells.append(f"{rows[column].mean():.4g}")
            cells.append(f"{s.loc[s.index.isin(labels), 'sparsity'].mean():.3f}")  # over tasks and grid points
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def kernel_tables(kernels: pd.DataFrame | None, prefill: pd.DataFrame | None, gpu: str, prefill_gpu: str) -> dict[str, str]:
    out = {}
    if kernels is not None:
        rows = kernels[kernels.L.isin([8192, 32768, 131072])]
        lines = [f"Source: `results/kernels/{gpu}/bench_kernels.csv` (`python tools/bench_kernels.py`; "
                 f"see `results/kernels/{gpu}/README.md`). Milliseconds, medians.\n",
                 "| L | cuDNN dense | ours d=1 | ours d=0.5 | ours d=0.25 | Flex d=0.5 | RR estimate+select (S=8) | "
                 "XAttention estimate | FlexPrefill estimate |", "|---|---|---|---|---|---|---|---|---|"]
        for _, r in rows.iterrows():
            values = [r.sdpa_cudnn_ms, r.ours_d1_ms, r["ours_d0.5_ms"], r["ours_d0.25_ms"], r.get("flex_d0.5_ms", float("nan")),
                      r.estimate_select_ms, r.estimate_xattention_ms, r.estimate_flexprefill_ms]
            lines.append(f"| {_k(int(r.L))} | " + " | ".join(_ms(v) for v in values) + " |")
        out["kernels"] = "\n".join(lines) + "\n"
    if prefill is not None:
        lines = [f"Source: `results/prefill/{prefill_gpu}/bench_prefill.csv` (`python tools/bench_prefill.py`; "
                 f"see `results/prefill/{prefill_gpu}/README.md`).\n",
                 "| L | SDPA | rrattention | speedup | eager (`cuda_graphs=False`) | CUDA graphs (`True`) "
                 "| sparsity (mean over layers) | prefill calls dense |",
                 "|---|---|---|---|---|---|---|---|"]
        forced = "rrattention_eager_ttft_ms" in prefill  # older runs timed one mode only
        for _, r in prefill.iterrows():
            dense = f"{r.dense_calls:.0%}" if "dense_calls" in prefill else "—"
            modes = (f"{r.speedup_eager:.2f}× | {r.speedup_graphs:.2f}×" if forced else "— | —")
            lines.append(f"| {_k(int(r.L))} | {_ms(r.sdpa_ttft_ms)} ms | {_ms(r.rrattention_ttft_ms)} ms | "
                         f"{r.speedup:.2f}× | {modes} | {r.sparsity:.2f} | {dense} |")
        out["prefill"] = "\n".join(lines) + "\n"
    return out


# ---------------------------------------------------------------------------------------- figures


def _figure(rows: int, cols: int, size):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return plt, fig, axes


def _save(plt, fig, path: Path, source: str) -> None:
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.text(0.005, 0.005, f"{source}; rebuilt by {REGENERATE}".replace("`", ""), fontsize=6, va="bottom")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def _task_axes(summary: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(task, column, label) per panel: % of full where the task has it, else the raw score."""
    panels = []
    for task, frame in summary.groupby("task", sort=True):
        metric = frame["metric"].iloc[0]
        if frame["pct_of_full"].notna().any() if "pct_of_full" in frame else False:
            panels.append((task, "pct_of_full", f"{task} {metric} (% of full)"))
        else:
            panels.append((task, "score", f"{task} {metric}"))
    return panels


def pareto_figure(main: Run, sweep: Run | None, path: Path) -> None:
    """Score vs sparsity at the longest length: each method of the main run, plus RRAttention's
    τ sweep per stride from the stride × τ ablation."""
    length = max(main.cfg.lengths)
    panels = _task_axes(main.summary)
    plt, fig, axes = _figure(1, len(panels), (6 * len(panels), 4.5))
    sources = [main.provenance()]
    for ax, (task, column, label) in zip(axes[0], panels):
        frame = main.summary[(main.summary.task == task) & (main.summary.length == length)]
        for _, r in frame.iterrows():
            ax.plot(r["sparsity"], r[column], "o", ms=8, label=r["method"])
        if sweep is not None and sweep.ablation is not None and "tau" in sweep.ablation.grid:
            s = sweep.summary[(sweep.summary.task == task) & (sweep.summary.length == length)]
            others = [a for a in sweep.ablation.grid if a != "tau"]
            groups = {}
            for point in sweep.ablation.points():
                groups.setdefault(point_label({a: point[a] for a in others}), []).append(point_label(point))
            for name, labels in groups.items():
                rows = s.set_index("method").reindex(labels).dropna(subset=["sparsity"])
                ax.plot(rows["sparsity"], rows[column], "--", marker=".", lw=1, label=f"RR τ sweep {name}")
        ax.set(xlabel="sparsity", ylabel=label, title=f"{label} vs sparsity, {_k(length)} tokens")
        ax.legend(fontsize=6)
    if sweep is not None:
        sources.append(sweep.provenance())
    _save(plt, fig, path, "; ".join(sources))


def sparsity_length_figure(main: Run, prefill: pd.DataFrame | None, gpu: str, path: Path) -> None:
    plt, fig, axes = _figure(1, 1, (7, 4.5))
    ax = axes[0][0]
    frame = main.summary[main.summary.task == sorted(main.summary.task.unique())[0]]
    for method, rows in frame.groupby("method", sort=False):
        ax.plot(rows["length"], rows["sparsity"], "o-", label=method)
    source = main.provenance()
    if prefill is not None:
        ax.plot(prefill["L"], prefill["sparsity"], "s--", label="rrattention default (prefill benchmark)")
        source += f"; results/prefill/{gpu}/bench_prefill.csv"
    ax.set(xscale="log", xlabel="tokens", ylabel="sparsity (mean over layers)", title="sparsity vs length")
    ax.legend(fontsize=7)
    _save(plt, fig, path, source)


def heatmap_figure(run: Run, path: Path) -> None:
    """Per method: sparsity and kept attention mass per layer (rows) and head (columns), mean over samples."""
    records = [r for r in run.records if "sparsity_per_head" in r]
    methods = list(dict.fromkeys(r["method"] for r in records))
    plt, fig, axes = _figure(2, len(methods), (3.2 * len(methods), 8))
    means = {(m, key): np.mean([r[key] for r in records if r["method"] == m], axis=0)
             for m in methods for key in ("sparsity_per_head", "mass_per_head")}
    lowest_mass = min(float(v.min()) for (m, key), v in means.items() if key == "mass_per_head")
    for col, method in enumerate(methods):
        layers = next(r["layers"] for r in records if r["method"] == method)
        for row, (key, cmap, title, vmin) in enumerate((("sparsity_per_head", "viridis", "sparsity", 0.0),
                                                        ("mass_per_head", "magma", "attention mass kept", lowest_mass))):
            values = means[(method, key)]
            ax = axes[row][col]
            image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=vmin, vmax=1)
            ax.set(title=f"{method}: {title}", xlabel="head", ylabel="layer")
            ax.set_xticks(range(values.shape[1]))
            ax.set_yticks(range(0, len(layers), max(1, len(layers) // 8)))
            ax.set_yticklabels(layers[:: max(1, len(layers) // 8)])
            fig.colorbar(image, ax=ax, fraction=0.046)
    lengths = sorted({r["length"] for r in records})
    _save(plt, fig, path, f"{run.provenance()}, {', '.join(map(_k, lengths))} tokens, {len(records) // max(1, len(methods))} samples")


def kernel_figure(kernels: pd.DataFrame | None, prefill: pd.DataFrame | None, gpu: str, prefill_gpu: str, path: Path) -> None:
    panels = [x for x in (kernels, prefill) if x is not None]
    plt, fig, axes = _figure(1, len(panels), (6 * len(panels), 4.5))
    axes = list(axes[0])
    sources = []
    if kernels is not None:
        ax = axes.pop(0)
        for density in (1, 0.5, 0.25, 0.1):
            column = f"ours_d{density:g}_ms"
            if column in kernels:
                ax.plot(kernels.L, kernels.sdpa_cudnn_ms / kernels[column], "o-", label=f"sparse kernel, density {density:g}")
        if "ours_d0.5_ms" in kernels:
            ax.plot(kernels.L, kernels.sdpa_cudnn_ms / (kernels["ours_d0.5_ms"] + kernels.estimate_select_ms), "s--",
                    label="estimate + select + sparse, density 0.5")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="speedup over cuDNN dense", title=f"attention kernels ({gpu})")
        ax.yaxis.set_major_formatter(plt.matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(plt.matplotlib.ticker.FormatStrFormatter("%g"))
        ax.legend(fontsize=7)
        sources.append(f"results/kernels/{gpu}/bench_kernels.csv")
    if prefill is not None:
        ax = axes.pop(0)
        ax.plot(prefill.L, prefill.speedup, "o-", label="rrattention (default config) vs SDPA")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(xscale="log", xlabel="tokens", ylabel="time-to-first-token speedup", title=f"SmolLM2 prefill ({prefill_gpu})")
        ax.legend(fontsize=7)
        sources.append(f"results/prefill/{prefill_gpu}/bench_prefill.csv")
    _save(plt, fig, path, "; ".join(sources))


def ablation_figure(run: Run, path: Path) -> None:
    """Per task at the longest length: score vs sparsity, one line per value of the first grid axis."""
    length = max(run.cfg.lengths)
    panels = _task_axes(run.summary)
    plt, fig, axes = _figure(1, len(panels), (6 * len(panels), 4.5))
    first = next(iter(run.ablation.grid))
    for ax, (task, column, label) in zip(axes[0], panels):
        s = run.summary[(run.summary.task == task) & (run.summary.length == length)].set_index("method")
        for value in run.ablation.grid[first]:
            labels = run.ablation.labels_where(first, value)
            rows = s.reindex(labels).dropna(subset=["sparsity"])
            ax.plot(rows["sparsity"], rows[column], "o-", label=f"{first}={value}")
        if "full" in s.index:
            ax.axhline(s.loc["full", column], color="gray", lw=0.8, label="full")
        ax.set(xlabel="sparsity", ylabel=label, title=f"{run.name}: {label}, {_k(length)} tokens")
        ax.legend(fontsize=7)
    _save(plt, fig, path, run.provenance())


# ---------------------------------------------------------------------------------------- driver


def _bench(results: Path, kind: str, name: str) -> tuple[pd.DataFrame | None, str]:
    """The benchmark of the GPU lent now if it has one, else of the earliest GPU that has (history)."""
    paths = sorted(results.glob(f"{kind}/*/{name}"), key=lambda p: (p.parent.name != CURRENT_GPU, p.parent.name))
    return (pd.read_csv(paths[0]), paths[0].parent.name) if paths else (None, "")


def build(results: Path, readme: Path | None, *, figures: bool = True) -> list[Path]:
    """Rebuild everything; returns the text files written (figures are not listed)."""
    runs = load_runs(results, plots=figures)
    written = [p for run in runs.values() for p in (run.path / "summary.csv", run.path / "table.md")]
    written += [run.path / "ablation.md" for run in runs.values() if run.ablation is not None]
    kernels, gpu = _bench(results, "kernels", "bench_kernels.csv")
    prefill, prefill_gpu = _bench(results, "prefill", "bench_prefill.csv")
    ablations = [run for run in runs.values() if run.ablation is not None]
    tables, figs = results / "tables", results / "figures"
    tables.mkdir(exist_ok=True)
    blocks: dict[str, str] = {}

    def write(path: Path, text: str) -> None:
        path.write_text(text)
        written.append(path)

    main = runs.get(MAIN_RUN)
    if main is not None:
        write(tables / "main_comparison.md", main_comparison(main))
        blocks["main"] = readme_main(main)
    if QUICKSTART_RUN in runs:
        blocks["quickstart"] = readme_wide(runs[QUICKSTART_RUN])
    if ablations:
        write(tables / "ablations.md", f"# Ablations\n\nRebuilt by `{REGENERATE}`.\n\n" + ablation_tables(ablations))
        longest = max(max(r.cfg.lengths) for r in ablations)
        blocks["ablations"] = ablation_tables(ablations, length=longest)
        blocks["ablation_summary"] = ablation_summary(ablations)
    kernel_blocks = kernel_tables(kernels, prefill, gpu, prefill_gpu)
    if kernel_blocks:
        write(tables / "kernels.md", f"# Kernel and prefill speed\n\nRebuilt by `{REGENERATE}`.\n\n" + "\n".join(kernel_blocks.values()))
        blocks.update(kernel_blocks)
    if figures:
        if main is not None:
            pareto_figure(main, runs.get("ablation_stride_tau"), figs / "pareto.png")
            sparsity_length_figure(main, prefill, prefill_gpu, figs / "sparsity_vs_length.png")
        if HEATMAP_RUN in runs:
            heatmap_figure(runs[HEATMAP_RUN], figs / "sparsity_heatmap.png")
        if kernels is not None or prefill is not None:
            kernel_figure(kernels, prefill, gpu, prefill_gpu, figs / "kernel_speedup.png")
        for run in ablations:
            ablation_figure(run, figs / f"{run.name}.png")
    for document in (readme, results / "README.md"):
        if document is not None and document.exists():
            text = document.read_text()
            updated = BLOCK.sub(lambda m: m.group(1) + blocks.get(m.group("name"), m.group(0)[len(m.group(1)):-len(m.group(3))])
                                + m.group(3), text)
            if updated != text:
                document.write_text(updated)
            written.append(document)
    return written
