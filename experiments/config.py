"""The evaluation config: one YAML file says model, methods, tasks, lengths, samples, seed, device
and output directory (default runs/); everything is validated when it is loaded."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import rrattention as rr


@dataclass(frozen=True)
class MethodSpec:
    """A method to evaluate: its registry name, its settings, and the label its rows carry."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def config(self) -> rr.config.AttentionConfig:
        return rr.methods.make_config(self.name, self.settings)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalConfig:
    run_name: str
    methods: tuple[MethodSpec, ...]
    tasks: tuple[TaskSpec, ...]
    lengths: tuple[int, ...]
    model: str = "smollm2"  # the offline asset, or a local HF model directory
    samples: int = 5
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (fp32 on CPU, bf16 on GPU) | float32 | bfloat16 | float16
    output_dir: str = "runs"  # git-ignored; "results" for the committed reference results

    def __post_init__(self) -> None:
        from . import TASKS

        if not isinstance(self.run_name, str) or not self.run_name or "/" in self.run_name:
            raise ValueError(f"run_name must be a non-empty name without '/', got {self.run_name!r}")
        if not self.methods:
            raise ValueError("methods must list at least one method")
        labels = [m.label for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ValueError(f"method labels must be unique, got {labels}")
        for spec in self.methods:
            try:
                spec.config()
            except (TypeError, ValueError) as err:
                raise type(err)(f"methods[{spec.label}]: {err}") from None
        if not self.tasks:
            raise ValueError("tasks must list at least one task")
        tasks = []
        for spec in self.tasks:
            if spec.name not in TASKS:
                raise ValueError(f"tasks: unknown task {spec.name!r}; expected one of {sorted(TASKS)}")
            try:
                tasks.append(TASKS[spec.name](**spec.settings))
            except (TypeError, ValueError) as err:
                raise ValueError(f"tasks[{spec.name}]: {err}") from None
        # lengths are token counts, except for tasks that count frames (videomme) when all tasks do
        frames = all(getattr(t, "length_unit", "tokens") == "frames" for t in tasks)
        low, unit = (1, "frame counts") if frames else (64, "token counts")
        if not self.lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < low for n in self.lengths):
            raise ValueError(f"lengths must be a list of {unit} >= {low}, got {list(self.lengths)}")
        for task in tasks:
            for length in self.lengths if hasattr(task, "check_length") else ():
                try:
                    task.check_length(length)
                except ValueError as err:
                    raise ValueError(f"tasks[{task.name}]: {err}") from None
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {self.samples!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvalConfig":
        if not isinstance(data, Mapping):
            raise TypeError(f"an evaluation config must be a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown evaluation config key(s) {unknown}; expected a subset of {sorted(names)}")
        missing = sorted(n for n in ("run_name", "methods", "tasks", "lengths") if n not in data)
        if missing:
            raise ValueError(f"evaluation config is missing {missing}")
        methods = tuple(_method(m) for m in data["methods"])
        tasks = tuple(spec for t in data["tasks"] for spec in _tasks(t))
        return cls(**{**data, "methods": methods, "tasks": tasks, "lengths": tuple(data["lengths"])})

    @classmethod
    def from_yaml(cls, path: str | Path) -> "EvalConfig":
        import yaml

        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(yaml.safe_load(fh))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["methods"] = [{"name": m.name, "settings": dict(m.settings), "label": m.label} for m in self.methods]
        out["tasks"] = [{"name": t.name, "settings": dict(t.settings)} for t in self.tasks]
        out["lengths"] = list(self.lengths)
        return out


def _method(entry: Any) -> MethodSpec:
    if isinstance(entry, str):
        return MethodSpec(entry, {}, entry)
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ValueError(f"a method entry must be a name or a mapping with 'name', got {entry!r}")
    unknown = sorted(set(entry) - {"name", "settings", "label"})
    if unknown:
        raise ValueError(f"method entry {entry.get('name')!r} has unknown key(s) {unknown}")
    return MethodSpec(entry["name"], dict(entry.get("settings") or {}), entry.get("label") or entry["name"])


def _tasks(entry: Any) -> list[TaskSpec]:
    """A task entry; ``helmet`` with ``categories`` becomes one task per HELMET dataset."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ValueError(f"a task entry must be a name or a mapping with 'name', got {entry!r}")
    settings = dict(entry.get("settings") or {})
    if entry["name"] == "helmet" and "dataset" not in settings:
        from .helmet import expand

        return [TaskSpec("helmet", s) for s in expand(settings)]
    return [TaskSpec(entry["name"], settings)]


def task_instances(cfg: "EvalConfig") -> dict[str, Any]:
    """The task objects of a config, by the name their records carry."""
    from . import TASKS

    instances = [TASKS[spec.name](**spec.settings) for spec in cfg.tasks]
    return {task.name: task for task in instances}
