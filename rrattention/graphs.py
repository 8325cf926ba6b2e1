"""Replaying a plan's sparse calls as CUDA graphs, so that a layer's call costs the host one graph
launch (and at most an input and an output copy) instead of every launch of the estimator, the
selection and the attention (``AttentionPlan(cuda_graphs=True)``).

A forward pass makes the same launches in every layer that shares the plan's layout and the same
settings: only the tensors' addresses differ. :class:`CallGraphs` therefore keys a call by a
*signature* (what the plan's layer will launch, :attr:`rrattention.plan.LayerPlan.graph_key`) and
the shapes and strides of its tensors (their dtype and device are the plan's). The first call of a
key runs eagerly (it compiles the kernels and fills the plan's launch caches); the second captures
the call on static input and output buffers, and every call from then on copies its inputs in,
replays the graph and copies the output out. A capture that fails (a backend that synchronises
with the host, say) leaves the key eager for the plan's life, with its reason in
:attr:`CallGraphs.declined`.

A caller that passes ``out`` and will not read the call's selection (``keep_extra=False``: a hook
that collects no statistics) can skip the copies: the second time a call comes with the very same
tensors (addresses, shapes and strides; a model's layers get the same ones again in every pass of
a prompt length, from PyTorch's caching allocator), a graph is captured on those tensors
themselves, and from then on that call is one replay. Such a graph keeps nothing alive: its
temporaries return to the memory pool that all of the plan's graphs share (they replay one after
another on one stream), so :data:`MAX_DIRECT_GRAPHS` of them cost no device memory beyond the
largest call's temporaries.

What stays eager: CPU tensors; inputs that need gradients; calls made while the current stream
is being captured already (a caller's own CUDA graph, ``torch.compile(mode="reduce-overhead")``:
those launches belong to the caller's graph); and the capture waits for 16-byte aligned inputs
(the static buffers are aligned, and Triton specialises on alignment), though a misaligned call
replays a graph captured from aligned ones (its inputs are copied into the aligned buffers).

The static buffers and the graphs' memory pool live as long as the plan. A replayed call's
selection is the graph's own tensor: it holds the call's block mask until the plan's next call, so
statistics read it right away. Calls of one plan run on one stream.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Hashable

import torch

# fn(q, k, v, out) -> (output tensor, what else the call returns); out may be None.
Call = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], tuple]

# Graphs captured on callers' own tensors, per plan (the oldest go first). A graph holds only its
# executable's host and launch state; a model's pass needs one per layer.
MAX_DIRECT_GRAPHS = 512


@dataclass
class Captured:
    """One captured call: its graph, the static buffers it reads and writes, what it returned."""

    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    out: torch.Tensor
    extra: object
    replays: int = 0


def _layout(x: torch.Tensor) -> tuple:
    # dtype and device are the plan's: one plan's calls all have the same
    return x.shape, x.stride()


def _must_run_eagerly(tensors) -> bool:
    """A call that runs eagerly even where its graph exists: it needs gradients, or the caller is
    capturing the stream (its launches belong to the caller's graph)."""
    return (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) or torch.cuda.is_current_stream_capturing()


def _capturable(tensors) -> bool:
    """CUDA tensors, 16-byte aligned as the static buffers are. A misaligned call can still replay
    a graph captured from aligned ones: it is copied into the graph's aligned buffers."""
    return all(t.device.type == "cuda" and t.data_ptr() % 16 == 0 for t in tensors)


def _static_like(x: torch.Tensor) -> torch.Tensor | None:
    """An empty buffer with ``x``'s strides (None when ``x`` is not dense: its strides cannot be kept)."""
    buffer = torch.empty_like(x)
    return buffer if buffer.stride() == x.stride() else None


class CallGraphs:
    """The CUDA graphs of one plan's calls, one per signature and tensor layout (module docstring)."""

    def __init__(self):
        self._seen: set = set()
        self._captured: dict[tuple, Captured] = {}
        self.declined: dict[tuple, str] = {}  # key → why its capture failed
        self._stream: torch.cuda.Stream | None = None
        self._pool = None  # the memory pool of every graph of these calls
        self._direct: dict[tuple, tuple] = {}  # (signature id, addresses, layouts) → (graph, signature)
        self._direct_seen: set = set()  # the same keys, of calls made once
        self._direct_replays = 0

    def __len__(self) -> int:
        return len(self._captured)

    @property
    def replays(self) -> int:
        """Calls answered by replaying a graph, over the plan's life."""
        return sum(c.replays for c in self._captured.values()) + self._direct_replays

    @property
    def direct(self) -> int:
        """Graphs captured on callers' own tensors, held now."""
        return len(self._direct)

    def run(self, signature: Hashable, call: Call, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            out: torch.Tensor | None, keep_extra: bool = True) -> tuple:
        """``call(q, k, v, out)``, eagerly or by replaying its graph → ``(out, extra)``.

        ``out`` (None: a fresh tensor) receives the output; ``extra`` is what the call returned
        beside it (for a replay, what the captured call returned: the graph's tensors).
        ``keep_extra=False`` with ``out`` given: the caller will not read ``extra``, which lets the
        call replay a graph captured on these very tensors (then ``extra`` is None)."""
        inputs = (q, k, v)
        tensors = inputs if out is None else (*inputs, out)
        if _must_run_eagerly(tensors):
            return call(q, k, v, out)
        direct = None
        if not keep_extra and out is not None:
            # Flat, so that the lookup hashes only numbers and sizes; the signature by identity (its
            # object checked on a hit: an id can be reused once the object is gone).
            direct = (id(signature), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), q.shape, q.stride(),
                      k.shape, k.stride(), v.shape, v.stride(), out.shape, out.stride())
            entry = self._direct.get(direct)
            if entry is not None and entry[1] is signature:
                entry[0].replay()
                self._direct_replays += 1
                return out, None
        key = (signature, *map(_layout, inputs), None if out is None else _layout(out))
        captured = self._captured.get(key)
        if captured is None:
            if key in self.declined or not _capturable(tensors):
                return call(q, k, v, out)
            if key not in self._seen:  # compile and warm the launch caches outside any capture
                self._seen.add(key)
                return call(q, k, v, out)
            captured = self._capture(key, call, inputs, out)
            if captured is None:
                return call(q, k, v, out)
        elif direct is not None and direct not in self.declined and _capturable(tensors):
            if direct in self._direct_seen:  # the second call on these tensors: capture on them
                graph = self._capture_direct(direct, signature, call, inputs, out)
                if graph is not None:
                    graph.replay()
                    self._direct_replays += 1
                    return out, None
            else:
                if len(self._direct_seen) >= 4 * MAX_DIRECT_GRAPHS:  # addresses that never came back
                    self._direct_seen.clear()
                self._direct_seen.add(direct)
        # One multi-tensor copy: the host issues one operation for the three inputs.
        torch._foreach_copy_(captured.inputs, list(inputs))
        captured.graph.replay()
        captured.replays += 1
        out = captured.out.clone() if out is None else out.copy_(captured.out)
        return out, captured.extra

    def _graph(self, key: tuple, call: Call, inputs, out) -> tuple | None:
        """``call`` captured into a new graph of the shared pool → ``(graph, result, extra)``, or None
        (the capture failed: ``key`` is declined, with the reason)."""
        device = inputs[0].device
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # Capture on a side stream (CUDA refuses the legacy default stream), after the work queued so far.
        self._stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(self._stream):
                # thread_local: another thread's CUDA calls during the capture do not invalidate it
                graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
                try:
                    result, extra = call(*inputs, out)
                finally:
                    graph.capture_end()
        except RuntimeError as error:
            self.declined[key] = f"capture failed: {error}"
            warnings.warn(f"rrattention: running a plan's calls without CUDA graphs: capture failed ({error})",
                          RuntimeWarning, stacklevel=5)
            return None
        finally:
            torch.cuda.current_stream().wait_stream(self._stream)
        return graph, result, extra

    def _capture_direct(self, direct: tuple, signature: Hashable, call: Call, inputs: tuple,
                        out: torch.Tensor) -> torch.cuda.CUDAGraph | None:
        self._direct_seen.discard(direct)
        made = self._graph(direct, call, inputs, out)
        if made is None:
            return None
        # result is the caller's out, extra unread: dropping them frees the temporaries for the pool's other graphs
        graph = made[0]
        self._direct[direct] = (graph, signature)
        while len(self._direct) > MAX_DIRECT_GRAPHS:  # the oldest first (a dict keeps insertion order)
            del self._direct[next(iter(self._direct))]
        return graph

    def _capture(self, key: tuple, call: Call, inputs: tuple, out: torch.Tensor | None) -> Captured | None:
        static = [_static_like(x) for x in inputs]
        static_out = None if out is None else _static_like(out)
        if any(s is None for s in static) or (out is not None and static_out is None):
            self.declined[key] = "a tensor whose strides an empty buffer cannot keep (not dense)"
            return None
        made = self._graph(key, call, static, static_out)
        if made is None:
            return None
        graph, result, extra = made
        captured = self._captured[key] = Captured(graph, static, result, extra)
        return captured
