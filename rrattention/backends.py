"""Backends: who can run which stage on which inputs, and why the others decline.

Each backend declares the devices, dtypes, head dims and block sizes it supports, for which of the
three stages (``estimate`` §2–§3, ``select`` §4, ``attention`` §5); ``not_supported_reasons``
returns the reasons it declines a given call (empty: it accepts). Dispatch takes, per stage, the
first backend of :data:`PRIORITY` that accepts. All backends compute the same function; the
reference is the definition the others are tested against.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from typing import Callable

import torch

STAGES = ("estimate", "select", "attention")
PRIORITY = ("triton", "flex", "reference")
_FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})


@dataclass(frozen=True)
class Problem:
    """What dispatch needs to know about a call (None: irrelevant to the stage asked)."""

    device: torch.device
    block_size: int
    dtype: torch.dtype = torch.float32
    head_dim: int | None = None
    stride: int | None = None
    group: int | None = None
    varlen: bool = False


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    stages: frozenset[str]
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype] = _FLOAT_DTYPES
    max_head_dim: int | None = None
    block_sizes: frozenset[int] | None = None
    varlen: bool = True
    requires: tuple[str, ...] = field(default=())
    check: Callable[[str, "Problem"], list[str]] | None = None  # backend-specific limits

    def not_supported_reasons(self, stage: str, problem: Problem) -> list[str]:
        reasons = []
        if stage not in self.stages:
            return [f"does not implement the {stage} stage (implements {', '.join(sorted(self.stages))})"]
        missing = [m for m in self.requires if not _importable(m)]
        if missing:
            reasons.append(f"needs the package(s) {', '.join(missing)}")
        if problem.device.type not in self.devices:
            reasons.append(f"runs on {'/'.join(sorted(self.devices))} tensors, got {problem.device.type}")
        if problem.dtype not in self.dtypes:
            reasons.append(f"dtype {problem.dtype} unsupported")
        if self.max_head_dim is not None and problem.head_dim is not None and not 16 <= problem.head_dim <= self.max_head_dim:
            reasons.append(f"head dim {problem.head_dim} outside [16, {self.max_head_dim}]")
        if self.block_sizes is not None and problem.block_size not in self.block_sizes:
            reasons.append(f"block_size {problem.block_size} not in {sorted(self.block_sizes)}")
        if problem.varlen and not self.varlen:
            reasons.append("no packed variable-length layout")
        if self.check is not None:
            reasons += self.check(stage, problem)
        return reasons


@functools.cache
def _importable(module: str) -> bool:
    # find_spec walks sys.path: cached, since dispatch runs on every attention call.
    return importlib.util.find_spec(module) is not None


def _triton_tile_limit(stage: str, problem: Problem) -> list[str]:
    if stage != "estimate" or problem.group is None or problem.stride is None:
        return []
    # One estimator program stacks the sampled rows of a whole KV group: the tile must fit registers.
    rows = (1 << max(0, (problem.group - 1).bit_length())) * (problem.block_size // problem.stride)
    if rows > 512:
        return [f"pow2(G)·block_size/stride = {rows} sampled rows per query block exceed the 512-row tile"]
    return []


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            name="triton",
            description="fused Triton kernels: estimator, on-device Top-τ selection, block-sparse FlashAttention",
            stages=frozenset(STAGES),
            devices=frozenset({"cuda"}),
            max_head_dim=256,
            block_sizes=frozenset({64, 128}),
            requires=("triton",),
            check=_triton_tile_limit,
        ),
        Backend(
            name="flex",
            description="torch FlexAttention on BlockMask.from_kv_blocks (attention stage only)",
            stages=frozenset({"attention"}),
            devices=frozenset({"cuda"}),
            max_head_dim=256,
            block_sizes=frozenset({64, 128}),
            varlen=False,
        ),
        Backend(
            name="reference",
            description="the plain-PyTorch definition (rrattention.reference); any device, slow on long inputs",
            stages=frozenset(STAGES),
            devices=frozenset({"cpu", "cuda", "mps", "xpu"}),
        ),
    )
}


def available() -> list[str]:
    return list(PRIORITY)


def get(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, PRIORITY))}, got {name!r}")
    return BACKENDS[name]


def explain(stage: str, problem: Problem) -> dict[str, list[str]]:
    """For every backend, why it declines ``stage`` for ``problem`` (an empty list: it accepts)."""
    return {name: BACKENDS[name].not_supported_reasons(stage, problem) for name in PRIORITY}


@functools.lru_cache(maxsize=1024)  # pure in its arguments; dispatch runs on every attention call
def choose(stage: str, problem: Problem, requested: str | None = None) -> str:
    """The backend that runs ``stage``: ``requested`` if given (a backend that does not implement
    the stage defers to the priority order), else the first in :data:`PRIORITY` that accepts."""
    if requested is not None:
        backend = get(requested)
        if stage in backend.stages:
            reasons = backend.not_supported_reasons(stage, problem)
            if reasons:
                raise ValueError(f"backend {requested!r} cannot run the {stage} stage: {'; '.join(reasons)}")
            return requested
    for name in PRIORITY:
        if not BACKENDS[name].not_supported_reasons(stage, problem):
            return name
    report = "; ".join(f"{n}: {', '.join(r)}" for n, r in explain(stage, problem).items())
    raise ValueError(f"no backend can run the {stage} stage for this input ({report})")
