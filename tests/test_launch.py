"""The plan's launch cache (rrattention.kernels._launch): Triton's JIT for the first launch of a
specialisation, the compiled kernel's launcher (every argument, constexprs in declaration order)
for a repeat, and Triton's JIT again whenever anything it specialises on changes.

The compiled launcher itself only exists on a GPU; these tests drive the cache with a stand-in
kernel, and tools/gpu_check.py checks real launches through it against the reference."""

import types

import pytest
import torch

pytest.importorskip("triton")

from rrattention.kernels import _launch  # noqa: E402

ARG_NAMES = ["X", "Y", "n", "scale", "BLOCK", "EVEN"]


class FakeTensor:
    def __init__(self, ptr, dtype=torch.float16):
        self.device, self.dtype, self.ptr = types.SimpleNamespace(type="cuda"), dtype, ptr

    def data_ptr(self):
        return self.ptr


class FakeKernel:
    """Records how it was launched: ("jit", args, kwargs) or ("launcher", grid, args)."""

    arg_names = ARG_NAMES

    def __init__(self, compiles=True):
        self.calls, self.compiles = [], compiles

    def __getitem__(self, grid):
        def jit(*args, **kwargs):
            self.calls.append(("jit", args, kwargs))
            return FakeCompiled(self, grid) if self.compiles else None

        return jit


class FakeCompiled:
    def __init__(self, kernel, grid):
        self.kernel, self.grid = kernel, grid

    def __getitem__(self, grid):
        return lambda *args: self.kernel.calls.append(("launcher", grid, args))


@pytest.fixture
def on_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def go(launches, kernel, x_ptr=0, n=7, block=64):
    launches(kernel, (4, 2, 1), (FakeTensor(x_ptr), FakeTensor(256)), (n, 0.5), dict(BLOCK=block, EVEN=True, num_warps=4))


def test_a_repeat_goes_to_the_compiled_launcher_with_every_argument(on_gpu):
    kernel, launches = FakeKernel(), _launch.Launches(enabled=True)
    go(launches, kernel)
    go(launches, kernel, x_ptr=4096)  # another address with the same alignment
    assert [c[0] for c in kernel.calls] == ["jit", "launcher"]
    _, grid, args = kernel.calls[1]
    assert grid == (4, 2, 1) and args[2:] == (7, 0.5, 64, True) and args[0].ptr == 4096  # constexprs in order
    assert kernel.calls[0][2] == dict(BLOCK=64, EVEN=True, num_warps=4)


@pytest.mark.parametrize("change", [dict(x_ptr=8), dict(n=8), dict(block=128)])
def test_a_changed_specialisation_goes_back_to_the_jit(on_gpu, change):
    kernel, launches = FakeKernel(), _launch.Launches(enabled=True)
    go(launches, kernel)
    go(launches, kernel, **change)  # misaligned pointer, another scalar, another constexpr
    go(launches, kernel, **change)
    assert [c[0] for c in kernel.calls] == ["jit", "jit", "launcher"]


def test_the_interpreter_disabled_caches_and_launch_hooks_keep_the_jit(on_gpu, monkeypatch):
    interpreted = FakeKernel(compiles=False)  # the CPU interpreter returns no compiled kernel
    launches = _launch.Launches(enabled=True)
    go(launches, interpreted), go(launches, interpreted)
    assert [c[0] for c in interpreted.calls] == ["jit", "jit"] and len(launches) == 0

    kernel = FakeKernel()
    off = _launch.Launches(enabled=False)
    go(off, kernel), go(off, kernel)
    assert [c[0] for c in kernel.calls] == ["jit", "jit"]

    kernel, launches = FakeKernel(), _launch.Launches(enabled=True)
    go(launches, kernel)
    hook = _launch.triton.knobs.runtime.launch_enter_hook
    hook.add(profiler := lambda *a: None)
    try:
        go(launches, kernel)  # a profiler's hook must see every launch
    finally:
        hook.remove(profiler)
    go(launches, kernel)
    assert [c[0] for c in kernel.calls] == ["jit", "jit", "launcher"]


def test_a_constexpr_left_at_its_default_keeps_the_jit(on_gpu):
    kernel, launches = FakeKernel(), _launch.Launches(enabled=True)
    for _ in range(2):
        launches(kernel, (1, 1, 1), (FakeTensor(0), FakeTensor(0)), (7, 0.5), dict(BLOCK=64))
    assert [c[0] for c in kernel.calls] == ["jit", "jit"]


def test_the_cache_is_bounded(on_gpu):
    kernel, launches = FakeKernel(), _launch.Launches(enabled=True)
    for n in range(_launch.MAX_SPECIALISATIONS + 5):
        go(launches, kernel, n=n)
    assert len(launches) == _launch.MAX_SPECIALISATIONS


def test_a_plan_binds_each_backend_once_for_all_its_layers():
    import rrattention as rr
    from rrattention import backends

    cfg = rr.RRConfig(stride=8, block_size=64, min_sparse_len=0)

    def plan(**kw):  # planning reads no tensors: a CUDA layout can be planned on the CPU
        return rr.AttentionPlan(cfg, q_heads=4, kv_heads=2, head_dim=32, dtype=torch.float16,
                                device=torch.device("cuda"), scale=32**-0.5, batch=1, q_len=128, k_len=128, **kw)

    bound = plan()
    first, second = bound.layer_plan(0).ops, bound.layer_plan(1).ops
    assert first.estimate is second.estimate is first.select is first.attention  # one instance for every layer
    assert first.estimate is not backends.get("triton") and isinstance(first.estimate.launches, _launch.Launches)
    assert plan().layer_plan(0).ops.estimate is not first.estimate  # and one per plan
    shared = plan(bind_backends=False).layer_plan(0).ops
    assert shared.estimate is backends.get("triton") and shared.estimate.launches is None
    assert backends.get("reference").bind() is backends.get("reference")  # stateless: bound to itself
