"""Ablations: one method's settings swept over a grid, evaluated by the harness.

An ablation YAML is an evaluation config whose ``methods`` are replaced by a grid::

    run_name: ablation_stride_tau
    method: rrattention
    base: {min_sparse_len: 0}          # settings shared by every grid point
    grid: {stride: [4, 8, 16, 32], tau: [0.8, 0.9, 0.95]}
    include_full: true                 # also evaluate full attention (for "% of full")
    tasks: [fidelity, copy]
    lengths: [4096, 8192]
    samples: 30

Every point of the grid's cartesian product becomes one method labelled ``stride=4,tau=0.8``;
the run directory, records and resume behaviour are those of :mod:`experiments.runner`.
``ablation.md`` pivots the summary: the first grid axis down the rows, the others across.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import rrattention as rr

from .config import EvalConfig

ABLATION_KEYS = ("method", "base", "grid", "include_full")
SPEC = "ablation.yaml"


def point_label(point: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


@dataclass(frozen=True)
class AblationConfig:
    """A grid over one method's settings plus the evaluation settings of :class:`EvalConfig`."""

    evaluation: Mapping[str, Any]  # every EvalConfig key except ``methods``
    grid: Mapping[str, tuple]
    method: str = "rrattention"
    base: Mapping[str, Any] = field(default_factory=dict)
    include_full: bool = True

    def __post_init__(self) -> None:
        if self.method not in rr.methods.available():
            raise ValueError(f"method must be one of {sorted(rr.methods.available())}, got {self.method!r}")
        if not isinstance(self.base, Mapping):
            raise TypeError(f"base must be a mapping of {self.method} settings, got {self.base!r}")
        if not isinstance(self.grid, Mapping) or not self.grid:
            raise ValueError(f"grid must map at least one {self.method} setting to a list of values, got {self.grid!r}")
        fields = {f.name for f in dataclasses.fields(rr.methods.make_config(self.method, {}))}
        grid = {}
        for key, values in self.grid.items():
            if key not in fields:
                raise ValueError(f"grid: {key!r} is not a {self.method} setting; expected one of {sorted(fields)}")
            if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"grid[{key}] must be a non-empty list of values, got {values!r}")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"grid[{key}] lists a value twice: {list(values)}")
            grid[key] = tuple(values)
        object.__setattr__(self, "grid", grid)
        overlap = sorted(set(grid) & set(self.base))
        if overlap:
            raise ValueError(f"{overlap} appear in both base and grid; a setting is either fixed or swept")
        if not isinstance(self.include_full, bool):
            raise TypeError(f"include_full must be a bool, got {self.include_full!r}")
        if "methods" in self.evaluation:
            raise ValueError("an ablation config has no 'methods': they come from 'grid' (and 'include_full')")
        self.eval_config()  # validates every grid point and the evaluation keys

    def points(self) -> list[dict[str, Any]]:
        """The grid's cartesian product, first axis slowest."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    def labels_where(self, axis: str, value: Any) -> list[str]:
        """The method labels of the grid points whose ``axis`` is ``value``."""
        return [point_label(p) for p in self.points() if p[axis] == value]

    def eval_config(self) -> EvalConfig:
        methods = [{"name": "full", "label": "full"}] if self.include_full else []
        methods += [{"name": self.method, "settings": {**self.base, **p}, "label": point_label(p)} for p in self.points()]
        return EvalConfig.from_dict({**self.evaluation, "methods": methods})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AblationConfig":
        if not isinstance(data, Mapping):
            raise TypeError(f"an ablation config must be a mapping, got {type(data).__name__}")
        if "grid" not in data:
            raise ValueError("an ablation config needs 'grid': {setting: [values, ...]}")
        evaluation = {k: v for k, v in data.items() if k not in ABLATION_KEYS}
        return cls(evaluation=evaluation, grid=data["grid"], method=data.get("method", "rrattention"),
                   base=dict(data.get("base") or {}), include_full=data.get("include_full", True))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "AblationConfig":
        import yaml

        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(yaml.safe_load(fh))

    def to_dict(self) -> dict[str, Any]:
        return {**self.evaluation, "method": self.method, "base": dict(self.base),
                "grid": {k: list(v) for k, v in self.grid.items()}, "include_full": self.include_full}


def write_pivot(ablation: AblationConfig, summary, run_dir: Path) -> str:
    """``ablation.md`` in ``run_dir``: the pivot under a header naming the command; returns the pivot."""
    from .runner import command

    table = pivot(ablation, summary)
    grid = ", ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in ablation.grid.items())
    base = ", ".join(f"{k}={v}" for k, v in ablation.base.items()) or "defaults"
    (run_dir / "ablation.md").write_text(
        f"# {run_dir.name}\n\nProduced by `{command(run_dir)}`. {ablation.method}: {grid}; other settings: {base}.\n"
        f"Cells: score (sparsity), mean over {ablation.evaluation.get('samples', '?')} samples.\n\n{table}")
    return table


def pivot(ablation: AblationConfig, summary) -> str:
    """Markdown: per task and length, the first grid axis down, the other axes across; each cell
    ``score (sparsity)``; the full-attention score beside the title."""
    axes = list(ablation.grid)
    labels = {point_label(p): p for p in ablation.points()}
    lines = []
    for (task, length), frame in summary.groupby(["task", "length"], sort=True):
        metric = frame["metric"].iloc[0]
        full = frame[frame.method == "full"]["score"]
        title = f"### {task}, {length} tokens: {metric}"
        title += f" (full attention: {full.iloc[0]:.4g})" if len(full) else ""
        columns = [point_label({a: p[a] for a in axes[1:]}) for p in ablation.points()] if len(axes) > 1 else [metric]
        columns = list(dict.fromkeys(columns))
        cells: dict = {}
        for _, row in frame.iterrows():
            point = labels.get(row["method"])
            if point is None:
                continue
            column = point_label({a: point[a] for a in axes[1:]}) if len(axes) > 1 else metric
            cells[(point[axes[0]], column)] = f"{row['score']:.4g} ({row['sparsity']:.2f})"
        header = f"| {axes[0]} | " + " | ".join(columns) + " |"
        lines += [title, "", header, "|" + "---|" * (len(columns) + 1)]
        for value in ablation.grid[axes[0]]:
            lines.append(f"| {value} | " + " | ".join(cells.get((value, c), "–") for c in columns) + " |")
        lines.append("")
    return "\n".join(lines)
