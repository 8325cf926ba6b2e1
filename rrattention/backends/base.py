"""What a backend is: the stages it implements on validated tensors, what it supports, and why it
declines a call (in the spirit of xformers' operators).

The stages (spec.md):

* ``estimate`` (§2–§3): ``rr_scores`` (RRAttention's sampled queries vs stride-mean keys) and
  ``antidiagonal_scores`` (XAttention's estimator, for that baseline);
* ``select`` (§4): ``select`` (Top-τ / forced-first block selection, with the compact form);
* ``attention`` (§5): ``attend`` (block-sparse attention with LSE);
* ``dense`` (§6's dense calls): ``dense_attend`` (dense causal attention, bottom-right aligned), for
  the calls the policies make dense; the block size does not apply to it.

Every operation takes either the padded layout (``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]``) or,
when ``packed`` is given, the packed one (``q [Tq, Hq, D]``, ``k, v [Tk, Hkv, D]``, sequences as in
flash-attn's ``cu_seqlens``). Arguments are trusted: the public API validates them once, and
:class:`rrattention.plan.AttentionPlan` calls these with no further checks.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import reference

STAGES = ("estimate", "select", "attention")  # a sparse call's pipeline
DENSE = "dense"  # the stage of a call spec §6 makes dense
FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})


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
    dense_flops: float | None = None  # the call's causal dense attention FLOPs (causal_flops); None: unknown


def causal_flops(batch: int, q_heads: int, q_len: int, k_len: int, head_dim: int) -> float:
    """FLOPs of dense bottom-right causal attention: ``4·B·Hq·Lq·(Lk − Lq/2)·D`` (QKᵀ and PV)."""
    return 4.0 * batch * q_heads * q_len * (k_len - q_len / 2) * head_dim


@dataclass(frozen=True)
class Packed:
    """The packed layout: sequence ``s`` is ``q[cu_seqlens_q[s]:cu_seqlens_q[s+1]]`` against
    ``k, v[cu_seqlens_k[s]:cu_seqlens_k[s+1]]`` (int32 ``[N+1]`` on the tensors' device).

    ``spans`` (``(q_start, q_end, k_start, k_end)`` per sequence, host ints) is known when the
    offsets were read back once (validation, statistics, or a backend that loops on the host).
    """

    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    spans: tuple[tuple[int, int, int, int], ...] | None = None

    def host_spans(self) -> tuple[tuple[int, int, int, int], ...]:
        """``spans``, read from the device if not known (a host synchronisation)."""
        if self.spans is not None:
            return self.spans
        bq, bk = self.cu_seqlens_q.tolist(), self.cu_seqlens_k.tolist()
        return tuple(zip(bq, bq[1:], bk, bk[1:]))


@dataclass(frozen=True)
class Selection:
    """Output of stage 3: the dense mask and its compact form (``kv_*`` None: derived on demand).

    Padded: bool ``[B, Hq, nbq, nbk]``; packed: ``[N, Hq, nbq_max, nbk_max]``, False outside each
    sequence's grid.
    """

    block_mask: torch.Tensor
    kv_count: torch.Tensor | None = None
    kv_index: torch.Tensor | None = None

    def compact(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kv_count is None:
            return reference.to_kv_index(self.block_mask)
        return self.kv_count, self.kv_index


@dataclass(frozen=True)
class EstimatorSettings:
    """The settings of RRAttention's estimator (§2–§3), resolved for one layer. ``head_start`` is the
    global index of the call's query head 0 (a tensor-parallel rank's slice of the heads, spec §2)."""

    stride: int
    block_size: int
    head_shift: str
    layer: int
    seed: int
    exact_stride_causal: bool
    scale: float
    precision: str = "exact"  # RRConfig.estimator_precision
    head_start: int = 0


@dataclass(frozen=True)
class SelectionSettings:
    """The settings of the block selection (§4). ``min_sparse_len`` and ``single_query_dense`` apply
    the dense policies of spec §6 per sequence of a packed batch (rows keep every visible block)."""

    block_size: int
    tau: float
    selector: str
    force_sink: bool
    force_diagonal: bool
    dense_last_query_block: bool
    min_sparse_len: int = 0
    single_query_dense: bool = False


@functools.cache
def importable(module: str) -> bool:
    # find_spec walks sys.path: cached, since dispatch asks on every plan. A dotted name imports
    # its parent package, which may be missing (or be another project's package of that name).
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


class Backend:
    """A backend: the stages it implements and the inputs it supports.

    A subclass sets the class attributes below, implements the operations of its stages, and may
    add limits of its own in :meth:`limits`. :meth:`not_supported_reasons` returns why it declines
    a call (empty: it accepts).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    stages: ClassVar[frozenset[str]]
    devices: ClassVar[frozenset[str]]
    dtypes: ClassVar[frozenset[torch.dtype]] = FLOAT_DTYPES
    max_head_dim: ClassVar[int | None] = None
    block_sizes: ClassVar[frozenset[int] | None] = None
    varlen: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ()

    def not_supported_reasons(self, stage: str, problem: Problem) -> list[str]:
        if stage not in self.stages:
            return [f"does not implement the {stage} stage (implements {', '.join(sorted(self.stages))})"]
        reasons = []
        missing = [m for m in self.requires if not importable(m)]
        if missing:
            reasons.append(f"needs the package(s) {', '.join(missing)}")
        if problem.device.type not in self.devices:
            reasons.append(f"runs on {'/'.join(sorted(self.devices))} tensors, got {problem.device.type}")
        if problem.dtype not in self.dtypes:
            reasons.append(f"dtype {problem.dtype} unsupported")
        if self.max_head_dim is not None and problem.head_dim is not None and not 16 <= problem.head_dim <= self.max_head_dim:
            reasons.append(f"head dim {problem.head_dim} outside [16, {self.max_head_dim}]")
        if self.block_sizes is not None and stage != DENSE and problem.block_size not in self.block_sizes:
            reasons.append(f"block_size {problem.block_size} not in {sorted(self.block_sizes)}")
        if problem.varlen and not self.varlen:
            reasons.append("no packed variable-length layout")
        return reasons + self.limits(stage, problem)

    def limits(self, stage: str, problem: Problem) -> list[str]:
        """Reasons specific to this backend (none by default)."""
        return []

    def bind(self) -> "Backend":
        """The backend as one plan uses it: a backend with per-plan state (cached kernel launches)
        returns a fresh instance, a stateless one itself."""
        return self

    def __repr__(self) -> str:
        return f"<backend {self.name!r}>"

    # The operations; a backend implements those of its stages.

    def rr_scores(self, q, k, settings: EstimatorSettings, packed: Packed | None = None) -> torch.Tensor:
        """fp32 block scores ``[B or N, Hq, nbq, nbk]`` of RRAttention's estimator (§2–§3)."""
        raise NotImplementedError(f"backend {self.name!r} does not implement rr_scores")

    def antidiagonal_scores(self, q, k, *, stride: int, block_size: int, scale: float,
                            packed: Packed | None = None) -> torch.Tensor:
        """fp32 block scores of XAttention's antidiagonal estimator (``rrattention.methods.xattention``)."""
        raise NotImplementedError(f"backend {self.name!r} does not implement antidiagonal_scores")

    def select(self, scores: torch.Tensor, settings: SelectionSettings, q_len: int, k_len: int,
               packed: Packed | None = None) -> Selection:
        """The block selection of §4 on fp32 ``scores`` (``q_len``/``k_len`` unused when packed)."""
        raise NotImplementedError(f"backend {self.name!r} does not implement select")

    def attend(self, q, k, v, selection: Selection, *, block_size: int, scale: float, packed: Packed | None = None,
               out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(out, lse)``: out like ``q`` (written into ``out`` when given: any strides with a unit
        last one), fp32 lse ``[B, Hq, Lq]`` (packed: ``[Hq, Tq]``), natural log."""
        raise NotImplementedError(f"backend {self.name!r} does not implement attend")

    def dense_attend(self, q, k, v, *, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
        """Dense causal attention, bottom-right aligned: ``q [B, Hq, Lq, D]``, ``k, v [B, Hkv, Lk, D]``
        → like ``q`` (written into ``out`` when given: any strides with a unit last one)."""
        raise NotImplementedError(f"backend {self.name!r} does not implement dense_attend")


class KernelBackend(Backend):
    """A backend that launches the project's Triton kernels: its plan instance (:meth:`bind`)
    caches their compiled launches (``rrattention.kernels._launch``); the shared instance uses
    Triton's own launch path."""

    def __init__(self, launches=None):
        self.launches = launches

    def bind(self) -> "KernelBackend":
        from ..kernels._launch import Launches

        return type(self)(Launches())
