"""Optional per-stage timing of one call (``time_stages=True``), owned by that call."""

from __future__ import annotations

import contextlib
import time

import torch


class StageTimer:
    """Times named stages: CUDA events on a GPU (read after one synchronisation), else wall clock."""

    def __init__(self, device: torch.device):
        self._cuda = device.type == "cuda"
        self._spans: dict[str, list] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        if self._cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self._spans[name] = [start, end]

    def milliseconds(self) -> dict[str, float]:
        if self._cuda:
            torch.cuda.synchronize()
            return {n: s.elapsed_time(e) for n, (s, e) in self._spans.items()}
        return {n: (e - s) * 1e3 for n, (s, e) in self._spans.items()}


def stage(timer: StageTimer | None, name: str):
    """``timer.stage(name)``, or nothing when the call is not timed."""
    return timer.stage(name) if timer is not None else contextlib.nullcontext()
