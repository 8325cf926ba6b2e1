"""The plugin's settings, from vLLM's ``--additional-config '{"rrattention": {...}}'`` (no vLLM import).

The ``rrattention`` section holds a method's config fields (``RRConfig`` by default; ``"method":
"xattention"`` etc. picks another registered method) plus the plugin's own keys:

* ``method``: a name of :func:`rrattention.methods.available` (default ``"rrattention"``);
* ``backend``: force an RRAttention backend (``"triton"``, ``"reference"``; default: dispatch);
* ``stats_file``: a path; every prefill call appends one JSON line of statistics (spec §6) to it;
* ``time_stages``: time estimate / select / attention of every prefill call (synchronises).

The config is built by the method's config class, so its validation errors are the library's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ... import backends, methods
from ...config import AttentionConfig, RRConfig

SECTION = "rrattention"
PLUGIN_KEYS = ("method", "backend", "stats_file", "time_stages")


@dataclass(frozen=True)
class VllmSettings:
    cfg: AttentionConfig = RRConfig()
    backend: str | None = None
    stats_file: str | None = None
    time_stages: bool = False

    @classmethod
    def from_additional_config(cls, additional_config: Any) -> "VllmSettings":
        """The settings of vLLM's ``additional_config`` (a dict; absent section: the defaults)."""
        if additional_config is None:
            return cls()
        if not isinstance(additional_config, Mapping):
            raise TypeError(f"additional_config must be a dict, got {type(additional_config).__name__}")
        section = additional_config.get(SECTION, {})
        if not isinstance(section, Mapping):
            raise TypeError(f'additional_config["{SECTION}"] must be a dict of settings, got {type(section).__name__}')
        fields = {k: v for k, v in section.items() if k not in PLUGIN_KEYS}
        method = section.get("method", "rrattention")
        try:
            cfg = methods.make_config(method, fields)
        except (TypeError, ValueError) as err:
            raise type(err)(f'additional_config["{SECTION}"]: {err}') from None
        backend = section.get("backend")
        if backend is not None:
            backends.get(backend)
        stats_file = section.get("stats_file")
        if stats_file is not None and not isinstance(stats_file, str):
            raise TypeError(f'additional_config["{SECTION}"]["stats_file"] must be a path (str), got {stats_file!r}')
        time_stages = section.get("time_stages", False)
        if not isinstance(time_stages, bool):
            raise TypeError(f'additional_config["{SECTION}"]["time_stages"] must be a bool, got {time_stages!r}')
        return cls(cfg, backend, stats_file, time_stages)

    def head_shifts(self) -> set[str]:
        """Every ``head_shift`` a layer can run with (the base config and its overrides)."""
        shifts = {getattr(self.cfg, "head_shift", None)}
        shifts |= {dict(o).get("head_shift") for o in self.cfg.layer_overrides.values()}
        return shifts - {None}
