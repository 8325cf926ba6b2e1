"""vLLM attention-backend plugin: RRAttention prefill inside vLLM (``--attention-backend RRATTENTION``).

vLLM loads :func:`register` in each of its processes through the ``vllm.general_plugins`` entry
point of this package (``pyproject.toml``); it registers the backend class
:class:`.backend.RRAttentionBackend` under the name ``RRATTENTION``. Nothing else is patched.

* :mod:`.backend`: the CUDA backend (vLLM's FlashAttention backend, RRAttention prefill);
* :mod:`.cpu`: its CPU variant for tests, registered as ``CPU_ATTN`` when
  ``RRATTENTION_VLLM_CPU_ATTN=1`` (vLLM's CPU platform selects no other name; the variable may
  instead hold the class path of a subclass of it);
* :mod:`.paged`: the paged KV-cache read and the prefill call, without importing vLLM;
* :mod:`.settings`: ``--additional-config '{"rrattention": {...}}'``.

vLLM sends its config (the selected backend included, an enum member) to the processes it starts.
A forked process (vLLM's default on CUDA) inherits the registration; a spawned one (vLLM spawns on
the CPU, under Ray, or once CUDA is initialised) unpickles the config before it loads any plugin,
and a name registered at run time is unknown there. Two ways round it: a script calls
:func:`register` at its top level (a spawned process re-imports the script first), or the backend
is selected as vLLM's built-in ``CUSTOM`` slot, which this plugin fills when
``RRATTENTION_VLLM_CUSTOM=1``.

This module imports vLLM only inside :func:`register`.
"""

from __future__ import annotations

import os

NAME = "RRATTENTION"
BACKEND_PATH = "rrattention.integrations.vllm.backend.RRAttentionBackend"
CPU_BACKEND_PATH = "rrattention.integrations.vllm.cpu.RRCPUAttentionBackend"
CPU_ENV = "RRATTENTION_VLLM_CPU_ATTN"
CUSTOM_ENV = "RRATTENTION_VLLM_CUSTOM"


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register ``RRATTENTION`` (idempotent); on request
    also as ``CUSTOM`` (``RRATTENTION_VLLM_CUSTOM=1``), and the CPU variant in place of
    ``CPU_ATTN`` (``RRATTENTION_VLLM_CPU_ATTN=1``)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if NAME in AttentionBackendEnum.__members__:
        register_backend(AttentionBackendEnum[NAME], BACKEND_PATH)
    else:
        register_backend(NAME, BACKEND_PATH)
    if os.environ.get(CUSTOM_ENV) == "1":
        register_backend(AttentionBackendEnum.CUSTOM, BACKEND_PATH)
    cpu = os.environ.get(CPU_ENV, "")
    if cpu:
        register_backend(AttentionBackendEnum.CPU_ATTN, CPU_BACKEND_PATH if cpu == "1" else cpu)
