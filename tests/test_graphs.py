"""CUDA-graph replay of a plan's calls (rrattention.graphs): eager first, captured second, replayed
after; one graph per signature and layout; a failed capture stays eager; which layers share a graph.

CUDA graphs exist only on a GPU: the CallGraphs tests drive it with a stand-in graph whose replay
re-runs what was launched during capture, and tools/gpu_check.py checks real captures and replays
of a plan's layers bit for bit against independent calls."""

import contextlib
import types

import pytest
import torch

import rrattention as rr
from rrattention import graphs


class FakeCuda:
    """Stands in for torch.cuda's graph and stream API: a capture records the launches made while
    it is open (here: calls of ``launch``), and a replay runs them again on the captured tensors."""

    def __init__(self, fail_capture: bool = False):
        self.capturing, self.fail_capture, self.replays, self.captures = None, fail_capture, 0, 0
        self.pools = set()
        fake = self

        class Graph:
            def __init__(self):
                self.launches = []

            def capture_begin(self, pool=None, capture_error_mode="global"):
                fake.pools.add(pool)
                fake.capturing = self

            def capture_end(self):
                fake.capturing = None
                fake.captures += 1
                if fake.fail_capture:
                    raise RuntimeError("operation not permitted when stream is capturing")

            def replay(self):
                fake.replays += 1
                for launch in self.launches:
                    launch()

        self.CUDAGraph = Graph
        self.Stream = lambda device=None: types.SimpleNamespace(wait_stream=lambda other: None)
        self.stream = lambda s: contextlib.nullcontext()
        self.current_stream = lambda: types.SimpleNamespace(wait_stream=lambda other: None)
        self.graph_pool_handle = lambda: object()

    def launch(self, kernel):
        """Run ``kernel`` now, or record it into the open capture (as CUDA does: nothing runs)."""
        if self.capturing is not None:
            self.capturing.launches.append(kernel)
        else:
            kernel()


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = FakeCuda()
    for name in ("CUDAGraph", "Stream", "stream", "current_stream", "graph_pool_handle"):
        monkeypatch.setattr(graphs.torch.cuda, name, getattr(fake, name))
    # CPU tensors stand in for CUDA ones; alignment is still checked
    monkeypatch.setattr(graphs, "_capturable", lambda tensors: all(t.data_ptr() % 16 == 0 for t in tensors))
    monkeypatch.setattr(graphs.torch.cuda, "is_current_stream_capturing", lambda: fake.capturing is not None)
    return fake


def make_call(fake, log):
    def call(q, k, v, out):
        log.append(q.data_ptr())
        out = torch.empty_like(q) if out is None else out

        def kernel():
            torch.add(q * 2, k, out=out).sub_(v)

        fake.launch(kernel)
        return out, ("extra", out.data_ptr())

    return call


def tensors(seed, shape=(2, 3, 8, 4)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(3)]


def test_first_call_eager_second_captured_then_replayed(fake_cuda):
    calls, log = graphs.CallGraphs(), []
    call = make_call(fake_cuda, log)
    results = []
    for step in range(5):
        q, k, v = tensors(step)
        out = torch.empty_like(q)
        got, extra = calls.run("sig", call, q, k, v, out)
        assert got is out
        assert torch.equal(got, q * 2 + k - v), step
        results.append(extra)
    # eager, then capture (on static buffers), then three replays that never call the function
    assert len(log) == 2 and fake_cuda.captures == 1 and fake_cuda.replays == 4
    captured = next(iter(calls._captured.values()))
    assert log[1] == captured.inputs[0].data_ptr()  # the capture ran on the plan's static buffers
    assert len(calls) == 1 and calls.replays == 4
    assert results[1] == results[2] == results[4]  # a replay returns what the capture returned


def test_calls_on_the_same_tensors_replay_a_graph_of_their_own(fake_cuda):
    calls, log = graphs.CallGraphs(), []
    call = make_call(fake_cuda, log)
    q, k, v = tensors(0)
    out = torch.empty_like(q)
    extras = []
    for step in range(6):
        for x, y in zip((q, k, v), tensors(step)):  # new contents in the same memory, as a model's next pass
            x.copy_(y)
        got, extra = calls.run("sig", call, q, k, v, out, keep_extra=False)
        assert got is out and torch.equal(out, q * 2 + k - v), step
        extras.append(extra)
    # eager; captured on static buffers (replayed); copied and replayed; captured on the call's own
    # tensors and replayed; then that graph alone, with no copies
    assert len(log) == 3 and log[2] == q.data_ptr() and fake_cuda.captures == 2
    assert calls.direct == 1 and len(calls) == 1 and calls.replays == 5
    assert extras[1] is not None and extras[2] is not None and extras[3:] == [None, None, None]
    assert len(fake_cuda.pools) == 1  # every graph of the calls shares one memory pool
    captured = next(iter(calls._captured.values()))
    assert captured.replays == 2  # the copying graph was not replayed after the own graph existed


def test_own_graphs_only_without_extra_and_for_the_same_tensors(fake_cuda):
    calls, log = graphs.CallGraphs(), []
    call = make_call(fake_cuda, log)
    q, k, v = tensors(0)
    out = torch.empty_like(q)
    for step in range(4):  # the caller reads extra: always the copying graph
        assert calls.run("sig", call, q, k, v, out)[1] is not None
    alive = []  # every call's tensors kept, so that no address comes back
    for step in range(4):  # other tensors every call: never captured on them
        q2, k2, v2 = tensors(step + 10)
        alive.append((q2, k2, v2, torch.empty_like(q2)))
        assert torch.equal(calls.run("sig", call, *alive[-1], keep_extra=False)[0], q2 * 2 + k2 - v2)
    assert calls.direct == 0
    for step in range(4):  # without out there is nothing of the caller's to write into
        assert calls.run("sig", call, q, k, v, None, keep_extra=False)[1] is not None
    # one copying graph with out, one without (its own layout), none on the callers' tensors
    assert calls.direct == 0 and fake_cuda.captures == 2


def test_own_graphs_are_bounded(fake_cuda, monkeypatch):
    monkeypatch.setattr(graphs, "MAX_DIRECT_GRAPHS", 2)
    calls = graphs.CallGraphs()
    call = make_call(fake_cuda, [])
    sets = [tensors(step) for step in range(3)]
    outs = [torch.empty_like(s[0]) for s in sets]
    for _ in range(4):
        for (q, k, v), out in zip(sets, outs):
            calls.run("sig", call, q, k, v, out, keep_extra=False)
            assert torch.equal(out, q * 2 + k - v)
    assert calls.direct == 2


def test_output_allocated_when_not_given(fake_cuda):
    calls = graphs.CallGraphs()
    call = make_call(fake_cuda, [])
    outs = []
    for step in range(4):
        q, k, v = tensors(step)
        got, _ = calls.run("sig", call, q, k, v, None)
        assert torch.equal(got, q * 2 + k - v)
        outs.append(got)
    assert torch.equal(outs[2], tensors(2)[0] * 2 + tensors(2)[1] - tensors(2)[2])  # not overwritten by step 3


def test_signature_and_layout_each_get_their_own_graph(fake_cuda):
    calls, log = graphs.CallGraphs(), []
    call = make_call(fake_cuda, log)
    for step in range(3):
        for signature, shape in (("a", (1, 2, 8, 4)), ("b", (1, 2, 8, 4)), ("a", (1, 2, 16, 4))):
            q, k, v = tensors(step, shape)
            assert torch.equal(calls.run(signature, call, q, k, v, None)[0], q * 2 + k - v)
    q, k, v = tensors(9, (1, 2, 8, 4))
    strided = [x.transpose(2, 3).contiguous().transpose(2, 3) for x in (q, k, v)]  # same shape, other strides
    for _ in range(2):
        assert torch.equal(calls.run("a", call, *strided, None)[0], q * 2 + k - v)
    assert len(calls) == 4 and fake_cuda.captures == 4


def test_failed_capture_stays_eager_with_its_reason(fake_cuda):
    fake_cuda.fail_capture = True
    calls, log = graphs.CallGraphs(), []
    call = make_call(fake_cuda, log)
    with pytest.warns(RuntimeWarning, match="capture failed"):
        for step in range(4):
            q, k, v = tensors(step)
            assert torch.equal(calls.run("sig", call, q, k, v, None)[0], q * 2 + k - v)
    assert len(calls) == 0 and fake_cuda.captures == 1 and fake_cuda.replays == 0
    assert len(log) == 5  # eager, the failed capture, then eager every time
    assert "not permitted" in next(iter(calls.declined.values()))


def misaligned(x):
    return torch.empty(x.numel() + 1)[1:].view(x.shape).copy_(x)


def test_misaligned_inputs_are_not_captured_from_but_replay(fake_cuda):
    calls, log = graphs.CallGraphs(), []
    call = make_call(fake_cuda, log)
    for step in range(3):
        q, k, v = tensors(step)
        q = misaligned(q)
        assert torch.equal(calls.run("sig", call, q, k, v, None)[0], q * 2 + k - v)
    assert len(calls) == 0 and fake_cuda.captures == 0 and len(log) == 3
    for step in range(2):  # aligned calls capture; a misaligned one then replays (copied into aligned buffers)
        assert torch.equal(calls.run("sig", call, *tensors(step), None)[0], tensors(step)[0] * 2 + tensors(step)[1] - tensors(step)[2])
    q, k, v = tensors(7)
    assert torch.equal(calls.run("sig", call, misaligned(q), k, v, None)[0], q * 2 + k - v)
    assert fake_cuda.captures == 1 and calls.replays == 2


def test_calls_inside_a_callers_capture_run_eagerly(fake_cuda):
    calls, log = graphs.CallGraphs(), []
    call = make_call(fake_cuda, log)
    for step in range(3):
        calls.run("sig", call, *tensors(step), None)
    outer = fake_cuda.CUDAGraph()
    outer.capture_begin()
    out = torch.empty_like(tensors(5)[0])
    calls.run("sig", call, *tensors(5), out)  # recorded into the caller's graph, not a replay of ours
    fake_cuda.capturing = None
    assert calls.replays == 2 and len(outer.launches) == 1
    outer.replay()
    assert torch.equal(out, tensors(5)[0] * 2 + tensors(5)[1] - tensors(5)[2])


def _plan(cfg, **kw):
    return rr.AttentionPlan(cfg, q_heads=4, kv_heads=2, head_dim=16, dtype=torch.float32, device=torch.device("cpu"),
                            scale=0.25, batch=1, q_len=512, k_len=512, **kw)


def test_layers_share_a_graph_key_when_they_launch_the_same_work():
    plan = _plan(rr.RRConfig(block_size=64, min_sparse_len=0, layer_overrides={3: {"tau": 0.8}}))
    keys = [plan.layer_plan(layer).graph_key for layer in range(5)]
    assert None not in keys
    assert keys[0] == keys[1] == keys[2] == keys[4] != keys[3]
    random = _plan(rr.RRConfig(block_size=64, min_sparse_len=0, head_shift="random"))
    assert random.layer_plan(0).graph_key != random.layer_plan(1).graph_key  # the layer seeds the offsets
    dense = _plan(rr.RRConfig(block_size=64, min_sparse_len=10**6))
    assert dense.layer_plan(0).graph_key is None


def test_methods_without_a_promise_run_eagerly():
    plan = _plan(rr.methods.make_config("a_shape", {"block_size": 64, "min_sparse_len": 0}))
    assert plan.layer_plan(0).graph_key is None


def test_cpu_plan_with_graphs_runs_eagerly_and_equals_a_plain_plan():
    cfg = rr.RRConfig(block_size=64, min_sparse_len=0)
    graphed, plain = _plan(cfg, cuda_graphs=True), _plan(cfg)
    assert graphed.graphs is None
    g = torch.Generator().manual_seed(0)
    for layer in range(3):
        q = torch.randn(1, 4, 512, 16, generator=g)
        k, v = (torch.randn(1, 2, 512, 16, generator=g) for _ in range(2))
        assert torch.equal(graphed.run(q, k, v, layer).out, plain.run(q, k, v, layer).out)


def test_configure_checks_cuda_graphs():
    from rrattention.integrations import _calls

    module = types.SimpleNamespace(layer_idx=0, num_key_value_groups=1)
    with pytest.raises(TypeError, match="cuda_graphs must be True, False or None"):
        _calls.attach([module], rr.RRConfig(), None, cuda_graphs="yes")
    assert _calls.attach([module], rr.RRConfig(), None, cuda_graphs=True).cuda_graphs


def test_default_replays_only_calls_below_the_measured_size():
    from rrattention.plan import GRAPH_MAX_DENSE_FLOPS

    def graphed(q_len, **kw):
        plan = rr.AttentionPlan(rr.RRConfig(), q_heads=9, kv_heads=3, head_dim=64, dtype=torch.bfloat16,
                                device=torch.device("cuda"), scale=0.125, batch=1, q_len=q_len, k_len=q_len,
                                cuda_graphs=None, **kw)
        return plan.graphs is not None

    assert graphed(16384) and not graphed(32768)
    assert rr.backends.causal_flops(1, 9, 32768, 32768, 64) == GRAPH_MAX_DENSE_FLOPS
    assert not graphed(16384, time_stages=True)  # timed stages need events between the kernels
    spans = ((0, 16384, 0, 16384), (16384, 32768, 16384, 32768))
    cu = torch.tensor([0, 16384, 32768], dtype=torch.int32)
    packed = rr.AttentionPlan(rr.RRConfig(), q_heads=9, kv_heads=3, head_dim=64, dtype=torch.bfloat16,
                              device=torch.device("cuda"), scale=0.125, cuda_graphs=None,
                              packed=rr.backends.Packed(cu, cu, 16384, 16384, spans))
    assert packed.graphs is not None  # two 16K sequences: less work than one 32K call


def test_a_run_that_kept_no_selection_has_no_statistics():
    plan = _plan(rr.RRConfig(block_size=64, min_sparse_len=0))
    q = torch.randn(1, 4, 512, 16)
    k, v = torch.randn(1, 2, 512, 16), torch.randn(1, 2, 512, 16)
    run = plan.run(q, k, v, 0, keep_selection=False)  # a CPU plan replays nothing: the selection is kept
    assert run.kept and plan.stats(run).block_mask is not None
    with pytest.raises(ValueError, match="keep_selection=False"):
        plan.stats(rr.plan.PlanRun(run.out, run.layer_plan))  # a sparse layer's run without its selection
