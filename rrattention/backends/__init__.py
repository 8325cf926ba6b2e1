"""Backends: who can run which stage on which inputs, and why the others decline.

Each backend (one file each) declares the devices, dtypes, head dims, block sizes and layouts it
supports for the stages it implements (``estimate`` §2–§3, ``select`` §4, ``attention`` §5, and
``dense``: the calls spec §6 makes dense), and
``not_supported_reasons(stage, problem)`` says why it declines a call (empty: it accepts).
Dispatch takes, per stage, the first backend of :data:`PRIORITY` that accepts. All backends
compute the same function; the reference is the definition the others are tested against.

Adding a backend: a file with a :class:`~rrattention.backends.base.Backend` subclass and one line
in :data:`BACKENDS`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .base import DENSE, STAGES, Backend, EstimatorSettings, Packed, Problem, Selection, SelectionSettings, causal_flops
from .fa4 import FA4Backend
from .flex import FlexBackend
from .reference import ReferenceBackend
from .triton import TritonBackend

BACKENDS: dict[str, Backend] = {b.name: b for b in (FA4Backend(), TritonBackend(), FlexBackend(), ReferenceBackend())}
PRIORITY = tuple(BACKENDS)  # dispatch order: fastest first, the reference last (it accepts everything)


@dataclass(frozen=True)
class StageBackends:
    """The backend chosen for each stage of one call."""

    estimate: Backend
    select: Backend
    attention: Backend

    @property
    def varlen(self) -> bool:
        """Every stage takes the packed layout in one launch."""
        return all(getattr(self, stage).varlen for stage in STAGES)


def available() -> list[str]:
    return list(PRIORITY)


def get(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, PRIORITY))}, got {name!r}")
    return BACKENDS[name]


def explain(stage: str, problem: Problem) -> dict[str, list[str]]:
    """For every backend, why it declines ``stage`` for ``problem`` (an empty list: it accepts)."""
    return {name: BACKENDS[name].not_supported_reasons(stage, problem) for name in PRIORITY}


@functools.lru_cache(maxsize=1024)  # pure in its arguments; asked once per planned layer
def choose(stage: str, problem: Problem, requested: str | None = None) -> Backend:
    """The backend that runs ``stage``: ``requested`` if given (a backend that does not implement
    the stage defers to the priority order), else the first in :data:`PRIORITY` that accepts."""
    if requested is not None:
        backend = get(requested)
        if stage in backend.stages:
            reasons = backend.not_supported_reasons(stage, problem)
            if reasons:
                raise ValueError(f"backend {requested!r} cannot run the {stage} stage: {'; '.join(reasons)}")
            return backend
    for name in PRIORITY:
        if not BACKENDS[name].not_supported_reasons(stage, problem):
            return BACKENDS[name]
    report = "; ".join(f"{n}: {', '.join(r)}" for n, r in explain(stage, problem).items())
    raise ValueError(f"no backend can run the {stage} stage for this input ({report})")


def choose_all(problem: Problem, requested: str | None = None) -> StageBackends:
    return StageBackends(*(choose(stage, problem, requested) for stage in STAGES))


__all__ = [
    "BACKENDS",
    "DENSE",
    "PRIORITY",
    "STAGES",
    "Backend",
    "EstimatorSettings",
    "Packed",
    "Problem",
    "Selection",
    "SelectionSettings",
    "StageBackends",
    "available",
    "causal_flops",
    "choose",
    "choose_all",
    "explain",
    "get",
]
