"""Data-parallel evaluation on torch.distributed: which process of a ``torchrun`` launch this is,
its device, and the two collectives the runner needs (rank 0 decides, the others follow; a
barrier before rank 0 merges the records).

``torchrun --nproc-per-node N tools/run_eval.py ...`` starts N processes with the env://
rendezvous variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
:func:`join` makes them a process group: NCCL when the run's device is CUDA (each rank on GPU
``LOCAL_RANK``), gloo on CPU. The runner's own collectives move a few Python objects only, so they go
through a gloo group in both cases. A process started without torchrun joins nothing and runs alone.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Iterator

# A rank that has finished its share waits at the barrier for the slowest rank, which may compute
# for hours. A rank that dies closes its connections (and torchrun stops the others), so a long
# timeout never hangs a failed run.
WAIT = datetime.timedelta(days=7)


def launched() -> bool:
    """Whether this process was started by torchrun (or another env:// launcher)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_command() -> str:
    """The launcher part of the command line that started this process: ``torchrun --nproc-per-node N``
    (with ``--nnodes`` when several nodes take part), or ``python`` without torchrun."""
    if not launched():
        return "python"
    world, local = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    nodes = f" --nnodes {world // local}" if world != local else ""
    return f"torchrun{nodes} --nproc-per-node {local}"


def rank_device(device: str, local_rank: int, cuda_count: int) -> str:
    """The device of the rank with ``local_rank`` for a run on ``device`` (``cpu`` or ``cuda``): its own
    GPU ``cuda:LOCAL_RANK``, or the CPU."""
    if device == "cpu":
        return "cpu"
    if device != "cuda":
        raise ValueError(f"device must be cpu or cuda once resolved, got {device!r}")
    if local_rank >= cuda_count:
        raise ValueError(f"torchrun started more processes on this node (LOCAL_RANK={local_rank}) than it has GPUs "
                         f"({cuda_count}): use --nproc-per-node {cuda_count} or fewer, or device: cpu in the config")
    return f"cuda:{local_rank}"


@dataclass(frozen=True)
class Group:
    """This process's place in a data-parallel run: ``rank`` of ``world_size``, its ``device``, and the
    gloo group (``control``; None: the default group) the runner's collectives use."""

    rank: int
    world_size: int
    device: str
    control: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def decide(self, decision: Callable[[], Any]) -> Any:
        """``decision()`` run on rank 0, its result returned on every rank. An exception of rank 0 is
        raised on every rank (the same exception where it pickles, its type and message otherwise),
        so that no rank goes on when rank 0 refused the run."""
        import torch.distributed as dist

        payload: list = [None]
        if self.is_main:
            try:
                payload[0] = ("ok", decision())
            except Exception as err:
                payload[0] = ("error", _portable(err))
                dist.broadcast_object_list(payload, src=0, group=self.control)
                raise
        dist.broadcast_object_list(payload, src=0, group=self.control)
        status, value = payload[0]
        if status == "error":
            raise value
        return value

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self.control)


def _portable(err: Exception) -> Exception:
    """``err`` if it survives pickling, else a RuntimeError with its type and message."""
    try:
        copy = pickle.loads(pickle.dumps(err))
        if str(copy) == str(err):
            return copy
    except Exception:  # noqa: BLE001 - any failure to round-trip means: send the text instead
        pass
    return RuntimeError(f"rank 0 stopped the run: {type(err).__name__}: {err}")


@contextlib.contextmanager
def join(device: str) -> Iterator[Group | None]:
    """The process group of a torchrun launch for a run on ``device`` (``cpu`` or ``cuda``, resolved),
    left again on exit; None (and nothing joined) without torchrun."""
    if not launched():
        yield None
        return
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    own = rank_device(device, int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count() if device == "cuda" else 0)
    if own.startswith("cuda"):
        torch.cuda.set_device(torch.device(own))
        dist.init_process_group("nccl", init_method="env://", timeout=WAIT)
        control = dist.new_group(backend="gloo", timeout=WAIT)
    else:
        dist.init_process_group("gloo", init_method="env://", timeout=WAIT)
        control = None
    try:
        yield Group(rank, world, own, control)
    finally:
        dist.destroy_process_group()
