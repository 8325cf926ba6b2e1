"""Spec §4: Top-τ selection, causal and forced blocks, bottom-right alignment, kv_index."""

import pytest
import torch

import rrattention as rr
from rrattention.reference import forced_blocks, top_mass, visible_blocks
from tests import oracle

NO_FORCED = dict(force_sink=False, force_diagonal=False, dense_last_query_block=False)


def _row_scores(row, nbq=5):
    """Scores [1, 1, nbq, len(row)] whose last row is `row` (Lq = Lk = nbq blocks of 16)."""
    scores = torch.zeros(1, 1, nbq, len(row))
    scores[0, 0, -1] = torch.tensor(row)
    return scores


@pytest.mark.parametrize(
    "row, tau, top_tau, forced_first",
    [
        ([5.0, 0.5, 2.0, 0.3, 8.2], 0.90, {0, 2, 4}, {0, 2, 4}),
        ([1.0, 6.0, 5.0, 3.0, 1.0], 0.75, {0, 1, 2, 3, 4}, {0, 1, 2, 4}),
    ],
)
def test_reference_notes_5_2_table(row, tau, top_tau, forced_first):
    # row i = 4 of 5 key blocks: sink = block 0, diagonal = block 4; the last row is not made dense
    scores = _row_scores(row)
    for selector, want in (("top_tau", top_tau), ("forced_first", forced_first)):
        cfg = rr.RRConfig(stride=4, block_size=16, tau=tau, selector=selector, dense_last_query_block=False)
        mask = rr.select_blocks(scores, cfg, q_len=80, k_len=80)
        assert set(torch.nonzero(mask[0, 0, -1]).flatten().tolist()) == want, selector


def test_top_tau_without_forced_blocks_is_the_smallest_prefix_reaching_tau():
    # descending 8.2, 5.0, 2.0, 0.5, 0.3: exclusive prefixes 0, 8.2, 13.2, 15.2, 15.7 against 0.9·16 = 14.4
    cfg = rr.RRConfig(stride=4, block_size=16, tau=0.9, **NO_FORCED)
    mask = rr.select_blocks(_row_scores([5.0, 0.5, 2.0, 0.3, 8.2]), cfg, q_len=80, k_len=80)
    assert mask[0, 0, -1].tolist() == [True, False, True, False, True]


@pytest.mark.parametrize(
    "lq, lk, visible, mandatory",
    [
        (256, 512, [{0, 1, 2}, {0, 1, 2, 3}], [{0, 2}, {0, 3}]),
        (257, 384, [{0, 1}, {0, 1, 2}, {0, 1, 2}], [{0, 1}, {0, 2}, {0, 2}]),
        (300, 300, [{0}, {0, 1}, {0, 1, 2}], [{0}, {0, 1}, {0, 2}]),
    ],
)
def test_bottom_right_alignment_cases(lq, lk, visible, mandatory):
    vis = visible_blocks(lq, lk, 128)
    assert [set(torch.nonzero(r).flatten().tolist()) for r in vis] == visible
    forced = forced_blocks(lq, lk, 128, force_sink=True, force_diagonal=True, dense_last_query_block=False)
    assert [set(torch.nonzero(r).flatten().tolist()) for r in forced] == mandatory
    dense_last = forced_blocks(lq, lk, 128, force_sink=False, force_diagonal=False, dense_last_query_block=True)
    assert torch.equal(dense_last[-1], vis[-1]) and not bool(dense_last[:-1].any())


def test_zero_mass_row_keeps_only_forced_blocks():
    # Lq = 129 with S = 8: for heads with offset > 0 the last query block (1 token) has no sampled row
    scores = torch.zeros(1, 1, 2, 2)
    scores[0, 0, 0, 0] = 16.0
    cfg = rr.RRConfig(dense_last_query_block=False)
    mask = rr.select_blocks(scores, cfg, q_len=129, k_len=129)
    assert mask[0, 0].tolist() == [[True, False], [True, True]]
    bare = rr.select_blocks(scores, rr.RRConfig(**NO_FORCED), q_len=129, k_len=129)
    assert bare[0, 0].tolist() == [[True, False], [False, False]]


def test_tau_one_keeps_exactly_the_positive_blocks_despite_rounding():
    # 1e-9 is absorbed when added to 1.0 in fp32, which a literal "prefix < τ·T" test would drop
    row = torch.tensor([[1.0, 1e-9, 0.0, 3e-8]])
    assert top_mass(row, row.sum(-1), 1.0).tolist() == [[True, True, False, True]]


def test_ties_break_by_ascending_block_index():
    row = torch.tensor([[1.0, 2.0, 1.0, 2.0, 1.0]])  # T = 7, τ·T = 3.5
    assert top_mass(row, row.sum(-1), 0.5).tolist() == [[False, True, False, True, False]]
    assert top_mass(row, row.sum(-1), 0.6).tolist() == [[True, True, False, True, False]]


def test_future_blocks_are_dropped_even_if_scored():
    scores = torch.ones(1, 1, 3, 3)  # scores beyond the diagonal, which the estimator never produces
    mask = rr.select_blocks(scores, rr.RRConfig(tau=1.0, **NO_FORCED), q_len=384, k_len=384)
    assert torch.equal(mask[0, 0], torch.ones(3, 3, dtype=torch.bool).tril())


def test_matches_the_literal_oracle_on_random_rows():
    g = torch.Generator().manual_seed(0)
    lq, lk, bk = 700, 900, 64
    nbq, nbk = -(-lq // bk), -(-lk // bk)
    scores = torch.rand(2, 3, nbq, nbk, generator=g) ** 4 * visible_blocks(lq, lk, bk)
    for selector in ("top_tau", "forced_first"):
        for tau in (0.5, 0.8, 0.95):
            cfg = rr.RRConfig(block_size=bk, tau=tau, selector=selector, dense_last_query_block=False)
            mask = rr.select_blocks(scores, cfg, q_len=lq, k_len=lk)
            for b in range(2):
                for h in range(3):
                    for i in range(nbq):
                        diag = (min((i + 1) * bk, lq) - 1 + lk - lq) // bk
                        row = scores[b, h, i].double().tolist()
                        keep = oracle.select_row(row, tau, {0, diag} if selector == "forced_first" else None)
                        keep = {j for j in keep if oracle.visible(i, j, lq, lk, bk)} | {0, diag}
                        assert set(torch.nonzero(mask[b, h, i]).flatten().tolist()) == keep


def test_to_kv_index_layout():
    mask = torch.tensor([[[[True, False, True, False], [False, False, False, False], [False, True, True, True]]]])
    count, index = rr.to_kv_index(mask)
    assert count.dtype == index.dtype == torch.int32
    assert count.tolist() == [[[2, 0, 3]]]
    assert index.tolist() == [[[[0, 2, 1, 3], [0, 1, 2, 3], [1, 2, 3, 0]]]]


def test_kv_index_round_trips_through_flex_attention_block_mask():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    mask = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(1)) > 0.5
    count, index = rr.to_kv_index(mask)
    block_mask = flex.BlockMask.from_kv_blocks(count, index, BLOCK_SIZE=16)
    assert torch.equal(block_mask.to_dense().bool(), mask)
