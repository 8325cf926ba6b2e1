"""Launching a Triton kernel again without re-binding its arguments.

``kernel[grid](*args, **constexprs)`` binds and specialises every argument on every launch, which
costs tens of microseconds of host time per launch (Triton 3.6 on the H200), and a sparse call
makes four. A :class:`Launches` cache, owned by a plan (one per bound backend), makes the first
launch of a specialisation that way and keeps the compiled kernel's launcher; a later launch with
the same specialisation goes straight to that launcher.

A specialisation is what Triton compiles for: the grid, every scalar (Triton specialises integers
on their value being 1, their divisibility by 16 and their width; the key keeps the values
themselves), the constexprs and launch options, the current device, and each tensor's dtype and
16-byte alignment. Anything else falls back to Triton's own launch path: the CPU interpreter,
launch hooks (profilers), and Triton versions whose compiled-kernel launcher convention
(``CompiledKernel[grid](*all_arguments)``, constexprs included in declaration order) has not been
read and checked here.
"""

from __future__ import annotations

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

# Triton releases whose compiled-kernel launcher takes every argument, constexprs included, in
# declaration order (read in their sources; 3.6 checked on the H200 by tools/gpu_check.py).
LAUNCHER_VERSIONS = ("3.6", "3.7", "3.8", "3.9")
FAST_LAUNCH = ".".join(triton.__version__.split(".")[:2]) in LAUNCHER_VERSIONS
MAX_SPECIALISATIONS = 16  # per kernel: a plan sees one or two (its layout, the odd layer override)


def _launch_hooks_active() -> bool:
    # Triton 3.6+ keeps each hook as a HookChain (active when it holds calls); a plain callable counts too.
    runtime = triton.knobs.runtime
    return any(hook is not None and bool(getattr(hook, "calls", True))
               for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook))


class Launches:
    """Compiled launchers of the kernels one plan launches, keyed by specialisation."""

    def __init__(self, enabled: bool = FAST_LAUNCH):
        self.enabled = enabled
        self._launchers: dict[tuple, tuple] = {}

    def __len__(self) -> int:
        return len(self._launchers)

    def __call__(self, kernel, grid: tuple[int, int, int], tensors: tuple, scalars: tuple, constexprs: dict) -> None:
        """``kernel[grid](*tensors, *scalars, **constexprs)``: the kernel takes its tensor arguments
        first, then its scalars, then its constexprs; ``constexprs`` may hold launch options
        (``num_warps``, ``num_stages``)."""
        if not self.enabled or tensors[0].device.type != "cuda":
            kernel[grid](*tensors, *scalars, **constexprs)
            return
        key = (kernel, grid, scalars, tuple(constexprs.items()), torch.cuda.current_device(),
               tuple([_tensor_key(t) for t in tensors]))
        cached = self._launchers.get(key)
        if cached is not None and not _launch_hooks_active():
            launcher, tail = cached
            launcher(*tensors, *scalars, *tail)
            return
        compiled = kernel[grid](*tensors, *scalars, **constexprs)
        if compiled is None or not hasattr(compiled, "__getitem__"):  # the interpreter, or an unknown Triton
            return
        names = kernel.arg_names[len(tensors) + len(scalars):]
        if not set(names) <= constexprs.keys():  # a constexpr left at its default: keep Triton's path
            return
        if len(self._launchers) >= MAX_SPECIALISATIONS:
            self._launchers.pop(next(iter(self._launchers)))
        self._launchers[key] = (compiled[grid], tuple(constexprs[name] for name in names))


def _tensor_key(t) -> tuple:
    """What Triton specialises a tensor argument on; a TMA descriptor also on its shape, strides and
    block (one plan's descriptors all have the same, so keeping them costs no cache hits)."""
    if isinstance(t, TensorDescriptor):
        return t.base.dtype, t.base.data_ptr() & 15, tuple(t.shape), tuple(t.strides), tuple(t.block_shape)
    return t.dtype, t.data_ptr() & 15


def launch(kernel, grid: tuple[int, int, int], tensors: tuple, scalars: tuple, constexprs: dict,
           launches: Launches | None = None) -> None:
    """Launch ``kernel`` through ``launches`` when given, else through Triton's JIT."""
    if launches is None:
        kernel[grid](*tensors, *scalars, **constexprs)
    else:
        launches(kernel, grid, tensors, scalars, constexprs)
