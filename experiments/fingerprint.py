"""The config fingerprint: which settings decide a run's records, hashed, so that a run folder is
only resumed by the run that started it.

A record depends on the methods and their settings, the tasks and theirs, the length, the sample
index (through the seed and the sample count), the model's weights and the dtype they run in. Those
settings are saved beside the records (``fingerprint.json``) and hashed into a fingerprint that every
record carries; a run whose settings hash differently is refused (:class:`RunMismatchError`) rather
than mixed into the folder. Where the run writes, how it shows progress and which code version runs
are not part of it: a record from another commit is allowed (the table header counts them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .config import EvalConfig

FINGERPRINT = "fingerprint.json"
# Weight files of a local HF model directory (safetensors, PyTorch pickles, GGUF) and the files that
# decide how they are read; each is identified by name, size and a hash of its first and last MiB,
# so a multi-GB checkpoint is identified in milliseconds.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MODEL_FILES = ("config.json",)
EDGE_BYTES = 1 << 20


class RunMismatchError(ValueError):
    """A run folder holds records of other settings (or of unknown ones) than the run asked for."""

    def __init__(self, run_dir: Path, differences: list[str], reason: str = ""):
        self.run_dir = run_dir
        self.differences = differences
        self.reason = reason
        lines = [f"{run_dir}/ holds records of another run configuration; refusing to mix them with this run's."]
        if reason:
            lines.append(reason)
        lines += [f"  {d}" for d in differences]
        lines.append("Start over with --fresh (deletes this folder's records), or write elsewhere with --output-dir DIR.")
        super().__init__("\n".join(lines))

    def __reduce__(self):  # rebuilt from its fields, so that rank 0 can send it to the other ranks
        return type(self), (self.run_dir, self.differences, self.reason)


def file_identity(path: Path) -> dict[str, Any]:
    """Name, size and sha256 of the first and last MiB of ``path`` (the whole file when smaller)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            fh.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            digest.update(fh.read())
    return {"name": path.name, "size": size, "sha256_edges": digest.hexdigest()}


def weights_identity(model: str) -> dict[str, Any]:
    """What identifies the weights ``model`` names: the offline asset's pinned sha256, or the weight
    files of a local directory (or file)."""
    if model == "smollm2":
        from rrattention import assets

        return {"file": Path(assets.SMOLLM2_MEMBER).name, "sha256": assets.SMOLLM2_SHA256}
    path = Path(model)
    if path.is_file():
        return {"files": [file_identity(path)]}
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in MODEL_FILES))
        return {"files": [file_identity(p) for p in files]}
    # Not a local path (a hub name): nothing to read here, so the name alone identifies it.
    return {}


def settings(cfg: EvalConfig, dtype: str) -> dict[str, Any]:
    """The settings that decide ``cfg``'s records, in a form that does not depend on their order in
    the YAML (methods by label, lengths sorted). ``dtype`` is the resolved one (``auto`` is fp32 on
    CPU, bf16 on GPU): records computed in bf16 and in fp32 differ, so a run started on a GPU is
    not continued on a CPU. The device itself is not part of it: at one dtype, CPU and GPU compute
    the same records up to rounding."""
    return {
        "methods": {m.label: {"name": m.name, "settings": dict(m.settings)} for m in cfg.methods},
        "tasks": [{"name": t.name, "settings": dict(t.settings)} for t in cfg.tasks],
        "lengths": sorted(cfg.lengths),
        "samples": cfg.samples,
        "seed": cfg.seed,
        "model": cfg.model,
        "weights": weights_identity(cfg.model),
        "dtype": dtype,
    }


def fingerprint(fields: dict[str, Any]) -> str:
    """A short stable hash of ``fields``: sha256 of their canonical JSON, 16 hex digits."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def differences(saved: Any, now: Any, where: str = "") -> list[str]:
    """``"field: <saved> in the folder, <now> now"`` for every field where ``saved`` and ``now`` differ,
    descending into mappings so that the line names the setting (``methods.rr.settings.tau``)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in list(saved) + [k for k in now if k not in saved]:
            name = f"{where}.{key}" if where else str(key)
            if key not in now:
                out.append(f"{name}: {_show(saved[key])} in the folder, absent now")
            elif key not in saved:
                out.append(f"{name}: absent in the folder, {_show(now[key])} now")
            else:
                out += differences(saved[key], now[key], name)
        return out
    return [] if saved == now else [f"{where}: {_show(saved)} in the folder, {_show(now)} now"]


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def check_resumable(run_dir: Path, records: list[dict], fields: dict[str, Any]) -> None:
    """Raise :class:`RunMismatchError` unless every record of ``run_dir`` carries the fingerprint of
    ``fields``; a folder without records is always fine."""
    if not records:
        return
    current = fingerprint(fields)
    stored = {r.get("fingerprint") for r in records}
    if stored == {current}:
        return
    if None in stored:
        raise RunMismatchError(run_dir, [], (
            f"{sum(r.get('fingerprint') is None for r in records)} of its {len(records)} records carry no config "
            "fingerprint (they were written before runs recorded one), so the model weights and dtype they were "
            "computed with are unknown."))
    path = run_dir / FINGERPRINT
    saved = json.loads(path.read_text())["settings"] if path.exists() else None
    if saved is None or fingerprint(saved) == current or fingerprint(saved) not in stored:
        raise RunMismatchError(run_dir, [], f"Its records carry fingerprint(s) {sorted(stored)}, this run's is {current}, "
                                            f"and {FINGERPRINT} does not say which settings those were.")
    raise RunMismatchError(run_dir, differences(saved, fields), "Settings that differ:")


def save(run_dir: Path, fields: dict[str, Any]) -> None:
    (run_dir / FINGERPRINT).write_text(json.dumps({"fingerprint": fingerprint(fields), "settings": fields},
                                                  indent=2, sort_keys=True) + "\n")
