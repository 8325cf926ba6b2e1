"""A subclass of the plugin's CPU variant that checks every prefill call it makes, for the tests.

The engine test selects it with ``RRATTENTION_VLLM_CPU_ATTN=tests_vllm.checking.CheckingBackend``;
each prefill call then appends one JSON line to ``$RR_CHECK_FILE`` with

* ``keys_match``: the keys and values read back from the paged cache at each sequence's last
  ``Lq`` positions are exactly the ones vLLM handed this step (``key``, ``value``), so the cache
  write (through vLLM's ``slot_mapping``) and the read (through its ``block_table``) agree;
* ``max_err_vs_dense``: the largest difference between the call's output and dense causal
  attention over all of each sequence's gathered keys (bottom-right aligned);
* ``finite``, ``decode_rows``, ``q_lens``, ``k_lens``, ``layer``.
"""

import json
import os

import torch

from rrattention.integrations.vllm.cpu import RRCPUAttentionBackend, RRCPUAttentionImpl
from rrattention.reference import dense_causal_attention


class CheckingImpl(RRCPUAttentionImpl):
    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):
        output = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                                 output_block_scale)
        rows = None if attn_metadata is None else attn_metadata.prefill
        if rows is None:
            return output
        k, v = rows.gather(kv_cache, self.head_size)
        keys_match, max_err = True, 0.0
        for qa, qb, ka, kb in rows.packed.spans:
            new = slice(rows.token_start + qa, rows.token_start + qb)
            keys_match &= torch.equal(k[kb - (qb - qa) : kb], key[new]) and torch.equal(v[kb - (qb - qa) : kb], value[new])
            q = query[new].transpose(0, 1)[None]
            want = dense_causal_attention(q, k[ka:kb].transpose(0, 1)[None], v[ka:kb].transpose(0, 1)[None],
                                          scale=self.scale)[0].transpose(0, 1)
            max_err = max(max_err, float((output[new] - want).abs().max()))
        record = {
            "layer": self.rr_layer, "decode_rows": rows.first, "q_lens": [qb - qa for qa, qb, _, _ in rows.packed.spans],
            "k_lens": [kb - ka for _, _, ka, kb in rows.packed.spans], "keys_match": keys_match,
            "max_err_vs_dense": max_err, "finite": bool(torch.isfinite(output[rows.token_start : rows.token_end]).all()),
        }
        with open(os.environ["RR_CHECK_FILE"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        return output


class CheckingBackend(RRCPUAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return CheckingImpl
