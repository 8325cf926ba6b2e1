"""tools/structured_inputs.py: the benchmark inputs have the attention structure they claim (local and
sink-heavy heads that τ = 0.95 makes sparse, diffuse heads it leaves near dense), reproducibly."""

import sys
from pathlib import Path

import pytest
import torch

import rrattention as rr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from structured_inputs import HEAD_KINDS, SINKS, rope, structured_qkv  # noqa: E402


def test_rope_preserves_norms_and_makes_logits_depend_on_distance_only():
    x = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(64)
    rotated = rope(x, positions)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    a, b = x[0, :1].expand(64, -1), x[1, :1].expand(64, -1)  # the same two vectors at every position
    logits = (rope(a, positions)[:, None] * rope(b, positions)[None]).sum(-1)
    for shift in (1, 5):  # q at t, k at s: the logit depends on t − s only
        torch.testing.assert_close(logits.diagonal(shift)[:-1], logits.diagonal(shift)[1:], atol=1e-4, rtol=1e-4)


def test_structured_inputs_are_reproducible_and_structured():
    length, hq, hkv = 4096, 8, 2
    q, k, v = structured_qkv(1, hq, hkv, length, 128, torch.float32, "cpu", seed=3)
    again = structured_qkv(1, hq, hkv, length, 128, torch.float32, "cpu", seed=3)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), again))
    assert not torch.equal(q, structured_qkv(1, hq, hkv, length, 128, torch.float32, "cpu", seed=4)[0])
    assert q.shape == (1, hq, length, 128) and k.shape == v.shape == (1, hkv, length, 128)

    cfg = rr.RRConfig(min_sparse_len=0)
    scores = rr.estimate_block_scores(q, k, cfg, backend="reference")
    mask = rr.select_blocks(scores, cfg, q_len=length, k_len=length, backend="reference")
    visible = rr.reference.visible_blocks(length, length, cfg.block_size, "cpu")
    sparsity = 1 - mask.sum((-1, -2)).float()[0] / visible.sum()
    diffuse = torch.tensor([HEAD_KINDS[h % (hq // hkv) % len(HEAD_KINDS)][0] < 0.5 for h in range(hq)])
    assert sparsity[~diffuse].min() > 0.7, sparsity  # local and sink-heavy heads: most blocks dropped
    assert sparsity[diffuse].max() < 0.3, sparsity  # diffuse heads: most blocks kept
    # locality: the diagonal block and its neighbour hold more of a local head's estimated mass than far blocks
    row = scores[0, 0, -1]
    assert row[-1] + row[-2] > 0.5 * row.sum()
    # sinks: the sink-heavy heads put a fifth of the last row's mass or more on the first block
    sink_heavy = torch.tensor([HEAD_KINDS[h % (hq // hkv) % len(HEAD_KINDS)][1] > 1 for h in range(hq)])
    last = scores[0, :, -1]
    assert bool((last[sink_heavy, 0] > 0.2 * last[sink_heavy].sum(-1)).all()), last[:, 0] / last.sum(-1)
    with pytest.raises(ValueError, match="q_heads must be a multiple of kv_heads"):
        structured_qkv(1, 6, 4, 64, 16, torch.float32, "cpu")
    assert SINKS <= cfg.block_size
