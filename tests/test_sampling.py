"""Spec §2 and reference-notes §3: which query each head samples."""

import numpy as np
import pytest
import torch

from rrattention.reference import head_offsets, random_head_offset, sampled_query_positions


def test_worked_example_l1024_four_heads():
    offsets = head_offsets(4, 4, 8)
    assert offsets.tolist() == [0, 1, 2, 3]
    t, valid = sampled_query_positions(1024, 8, offsets)
    assert t.shape == (4, 128) and bool(valid.all())
    assert t[0, :3].tolist() == [0, 8, 16] and t[0, -1] == 1016
    assert t[3, -1] == 1019
    # head 1, query block 2 (tokens 256-383): strides 32..47, tokens 257, 265, ..., 377
    assert t[1, 32:48].tolist() == list(range(257, 378, 8))
    # offsets 4-7 are never sampled with only 4 heads
    assert set((t % 8).flatten().tolist()) == {0, 1, 2, 3}


def test_worked_example_l1003_last_stride():
    t, valid = sampled_query_positions(1003, 8, head_offsets(4, 4, 8))
    assert t.shape == (4, 126)
    assert t[:, -1].tolist() == [1000, 1001, 1002, 1003]
    assert valid[:, -1].tolist() == [True, True, True, False]
    assert bool(valid[:, :-1].all())


@pytest.mark.parametrize(
    "hq, hkv, groups",
    [
        # Llama-3.1-8B: even KV groups see offsets {0..3}, odd groups {4..7}
        (32, 8, [{0, 1, 2, 3}, {4, 5, 6, 7}] * 4),
        # Qwen2.5-7B (G = 7)
        (28, 4, [{0, 1, 2, 3, 4, 5, 6}, {7, 0, 1, 2, 3, 4, 5}, {6, 7, 0, 1, 2, 3, 4}, {5, 6, 7, 0, 1, 2, 3}]),
    ],
)
def test_round_robin_uses_the_global_head_index(hq, hkv, groups):
    offsets = head_offsets(hq, hkv, 8).view(hkv, hq // hkv)
    assert [set(g.tolist()) for g in offsets] == groups


def test_fixed_policy():
    assert head_offsets(6, 2, 8, "fixed").tolist() == [7] * 6
    assert head_offsets(3, 3, 4, "fixed").tolist() == [3] * 3


def test_group_round_robin_spreads_each_group_evenly():
    # G = 4 divides S = 8: every KV group covers 4 offsets spaced S/G = 2 apart, groups alternate parity
    offsets = head_offsets(32, 8, 8, "group_round_robin").view(8, 4)
    for g, row in enumerate(offsets.tolist()):
        assert row == [x + g % 2 for x in (0, 2, 4, 6)]
    # G = 1 is plain round robin; G = 7 does not divide 8, so round robin too
    assert torch.equal(head_offsets(8, 8, 8, "group_round_robin"), head_offsets(8, 8, 8))
    assert torch.equal(head_offsets(28, 4, 8, "group_round_robin"), head_offsets(28, 4, 8))
    # G = S: each group covers every offset once
    assert head_offsets(16, 2, 8, "group_round_robin").view(2, 8).tolist() == [list(range(8))] * 2


def test_random_policy_is_a_reproducible_function_of_seed_layer_head():
    a = head_offsets(64, 8, 8, "random", layer=3, seed=1)
    assert torch.equal(a, head_offsets(64, 8, 8, "random", layer=3, seed=1))
    assert not torch.equal(a, head_offsets(64, 8, 8, "random", layer=4, seed=1))
    assert not torch.equal(a, head_offsets(64, 8, 8, "random", layer=3, seed=2))
    assert a.min() >= 0 and a.max() < 8
    assert a.tolist() == [random_head_offset(1, 3, h, 8) for h in range(64)]
    # roughly uniform over many (layer, head) pairs
    counts = torch.bincount(torch.cat([head_offsets(64, 8, 8, "random", layer=i) for i in range(50)]), minlength=8)
    assert counts.min() > 0.8 * 400 and counts.max() < 1.2 * 400


def _splitmix64_numpy(x):
    # Independent of the library's integer arithmetic: numpy uint64 wraps modulo 2**64 by itself.
    with np.errstate(over="ignore"):
        x = np.uint64(x) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def test_random_offset_follows_the_documented_hash():
    for seed, layer, head, stride in [(0, 0, 0, 8), (7, 5, 2, 1 << 30), (123, 31, 63, 16)]:
        want = _splitmix64_numpy(_splitmix64_numpy(_splitmix64_numpy(seed) ^ np.uint64(layer)) ^ np.uint64(head))
        assert random_head_offset(seed, layer, head, stride) == int(want) % stride
    # pinned: a change of the hash would silently change every "random" ablation
    assert [random_head_offset(0, 0, h, 8) for h in range(16)] == [1, 0, 6, 3, 1, 4, 5, 4, 2, 3, 5, 3, 0, 4, 7, 4]
