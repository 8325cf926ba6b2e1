"""The vLLM plugin's paged KV-cache read and prefill call (``rrattention.integrations.vllm.paged``),
which import no vLLM: synthetic block tables in vLLM's logical cache view, every physical layout,
against a token-by-token read and dense attention over the gathered keys."""

import itertools

import pytest
import torch

import rrattention as rr
from rrattention.integrations.vllm.paged import PagedRows, call_record, kv_pages, write_kv
from rrattention.reference import dense_causal_attention

# vLLM's logical view [num_blocks, Hkv, block_size, 2·D] over the physical orders of KVCacheLayout
# (LBHNC, LBNHC, ...): the layer axis dropped, the rest permuted in memory.
PHYSICAL_ORDERS = [(0, 1, 2, 3), (0, 2, 1, 3), (1, 0, 2, 3), (1, 2, 0, 3)]


def _cache(num_blocks, kv_heads, block_size, dim, order, dtype=torch.float32):
    shape = (num_blocks, kv_heads, block_size, 2 * dim)
    physical = torch.zeros([shape[i] for i in order], dtype=dtype)
    return physical.permute(*[order.index(i) for i in range(4)])  # a view with the logical shape


def _batch(lengths, block_size, num_blocks, seed=0):
    """Each request ``(Lq, Lk)``: a random, non-contiguous page list; host starts and lengths."""
    g = torch.Generator().manual_seed(seed)
    pages = torch.randperm(num_blocks, generator=g)
    max_pages = max(-(-lk // block_size) for _, lk in lengths)
    table = torch.full((len(lengths), max_pages + 1), -1, dtype=torch.int32)  # -1: unused (never read)
    used = 0
    for r, (_, lk) in enumerate(lengths):
        n = -(-lk // block_size)
        table[r, :n] = pages[used : used + n]
        used += n
    starts = [0, *itertools.accumulate(lq for lq, _ in lengths)]
    return table, starts, [lk for _, lk in lengths]


def _fill(kv_cache, table, seq_lens, block_size, seed=1):
    """Random keys/values written through ``write_kv`` at every key slot; returns them per request."""
    _, kv_heads, _, two_d = kv_cache.shape
    g = torch.Generator().manual_seed(seed)
    per_request = []
    for r, lk in enumerate(seq_lens):
        k = torch.randn(lk, kv_heads, two_d // 2, generator=g) * 1.5
        v = torch.randn(lk, kv_heads, two_d // 2, generator=g)
        pos = torch.arange(lk)
        slots = table[r, pos // block_size].long() * block_size + pos % block_size
        write_kv(kv_cache, k, v, slots)
        per_request.append((k, v))
    return per_request


@pytest.mark.parametrize("order", PHYSICAL_ORDERS)
def test_gather_reads_every_key_of_the_rows(order):
    block_size, lengths = 16, [(1, 40), (1, 17), (30, 30), (5, 70), (64, 64)]
    kv = _cache(40, 2, block_size, 8, order)
    table, starts, seq_lens = _batch(lengths, block_size, 40)
    written = _fill(kv, table, seq_lens, block_size)
    for first, last in [(0, 5), (2, 5), (0, 2), (3, 4)]:
        rows = PagedRows.build(starts, seq_lens, table, block_size, first, last)
        k, v = rows.gather(kv, 8)
        assert torch.equal(k, torch.cat([written[r][0] for r in range(first, last)]))
        assert torch.equal(v, torch.cat([written[r][1] for r in range(first, last)]))
        assert (rows.token_start, rows.token_end) == (starts[first], starts[last])
        assert rows.packed.spans == tuple(
            (starts[r] - starts[first], starts[r + 1] - starts[first], sum(seq_lens[first:r]), sum(seq_lens[first : r + 1]))
            for r in range(first, last))


def test_kv_pages_is_flash_attentions_reading():
    kv = _cache(3, 2, 4, 5, (0, 2, 1, 3))
    kv.copy_(torch.arange(kv.numel(), dtype=torch.float32).view(kv.shape))
    key_cache, value_cache = kv_pages(kv, 5)
    assert key_cache.shape == value_cache.shape == (3, 4, 2, 5)
    assert torch.equal(key_cache[1, 3, 0], kv[1, 0, 3, :5]) and torch.equal(value_cache[2, 1, 1], kv[2, 1, 1, 5:])
    with pytest.raises(ValueError, match="kv_cache must be"):
        kv_pages(kv, 4)


def test_write_kv_skips_padding_slots():
    kv = _cache(2, 1, 4, 2, (0, 1, 2, 3))
    key, value = torch.ones(3, 1, 2), torch.full((3, 1, 2), 2.0)
    write_kv(kv, key, value, torch.tensor([5, -1]))  # two slots for three (padded) tokens; -1 is padding
    k, v = kv_pages(kv, 2)
    assert k[1, 1].tolist() == [[1.0, 1.0]] and v[1, 1].tolist() == [[2.0, 2.0]]
    assert int((k != 0).sum()) == 2 and int((v != 0).sum()) == 2


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (1, 2, 0, 3)])
def test_attend_at_tau_one_equals_dense_attention_over_the_gathered_keys(order):
    """A mixed batch: decodes first, a chunked-prefill continuation, fresh prompts above and below
    min_sparse_len; at tau = 1 each prefill equals dense attention over all of its keys."""
    block_size, hq, hkv, dim = 16, 4, 2, 16
    lengths = [(1, 50), (1, 33), (70, 200), (130, 130), (40, 40)]
    kv = _cache(60, hkv, block_size, dim, order)
    table, starts, seq_lens = _batch(lengths, block_size, 60, seed=3)
    written = _fill(kv, table, seq_lens, block_size, seed=4)
    query = torch.randn(starts[-1], hq, dim, generator=torch.Generator().manual_seed(5)) * 1.5
    cfg = rr.RRConfig(stride=8, block_size=64, tau=1.0, min_sparse_len=100)
    out = torch.full_like(query, float("nan"))
    rows = PagedRows.build(starts, seq_lens, table, block_size, 2, 5)
    plan, run = rows.attend(query, kv, out, cfg, layer=0, scale=dim**-0.5)
    assert bool(out[: starts[2]].isnan().all())  # decode rows are not touched
    for r in range(2, 5):
        k, v = written[r]
        q = query[starts[r] : starts[r + 1]]
        want = dense_causal_attention(*(x.transpose(0, 1)[None] for x in (q, k, v)), scale=dim**-0.5)[0].transpose(0, 1)
        torch.testing.assert_close(out[starts[r] : starts[r + 1]], want, atol=1e-5, rtol=1e-5)
    record = call_record(rows, plan, run, 0, decode_rows=2)
    assert record["q_lens"] == [70, 130, 40] and record["k_lens"] == [200, 130, 40]
    assert record["dense_reasons"] == [None, None, "Lk=40 < min_sparse_len=100"]
    assert record["decode_rows"] == 2 and len(record["sparsity_per_head"]) == 3
    # the plan is made once per step and reused by the step's other layers
    assert rows.attend(query, kv, out, cfg, layer=1, scale=dim**-0.5)[0] is plan


def test_attend_below_tau_one_selects_and_reports_sparsity():
    block_size, hq, hkv, dim = 32, 4, 2, 16
    lengths = [(1, 20), (300, 600), (512, 512)]
    kv = _cache(60, hkv, block_size, dim, (0, 1, 2, 3))
    table, starts, seq_lens = _batch(lengths, block_size, 60, seed=6)
    written = _fill(kv, table, seq_lens, block_size, seed=7)
    query = torch.randn(starts[-1], hq, dim, generator=torch.Generator().manual_seed(8)) * 1.5
    cfg = rr.RRConfig(stride=8, block_size=64, tau=0.5, min_sparse_len=0)
    out = torch.zeros_like(query)
    rows = PagedRows.build(starts, seq_lens, table, block_size, 1, 3)
    plan, run = rows.attend(query, kv, out, cfg, layer=0, scale=dim**-0.5, head_start=4)
    record = call_record(rows, plan, run, 0)
    assert record["sparsity"] > 0.1 and all(s > 0 for s in record["sparsity_per_seq"])
    assert bool(torch.isfinite(out).all())
    # the same as the public packed function on the gathered keys, with the head offset
    k = torch.cat([written[r][0] for r in (1, 2)])
    v = torch.cat([written[r][1] for r in (1, 2)])
    cu_q = torch.tensor([0, 300, 812], dtype=torch.int32)
    cu_k = torch.tensor([0, 600, 1112], dtype=torch.int32)
    want = rr.rr_attention_varlen(query[1:], k, v, cu_q, cu_k, 512, 600, cfg, layer=0, head_start=4)
    torch.testing.assert_close(out[1:], want, atol=1e-6, rtol=1e-6)


def test_rows_reject_a_row_without_enough_keys():
    table = torch.zeros(2, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="1 <= Lq <= Lk"):
        PagedRows.build([0, 5, 10], [5, 4], table, 16, 0, 2)
    with pytest.raises(ValueError, match="rows"):
        PagedRows.build([0, 5, 10], [5, 5], table, 16, 1, 1)
