"""FlashAttention-4 (``flash-attn-4``, CuTe DSL) as the attention stage, on Hopper (SM90).

The selection becomes FA4's block-sparse lists on the device (:mod:`rrattention.kernels.block_lists`:
tiles below the causal diagonal full, the others partial, per head, ``pack_gqa=False``) and
``flash_attn.cute.flash_attn_func`` runs them with ``causal=True`` (bottom-right for ``Lq < Lk``),
returning the natural-log LSE; a packed batch's selection becomes FA4's varlen lists for
``flash_attn_varlen_func`` (``attend(packed=...)``; ``cu_total_m_blocks`` and
``cu_block_idx_offsets``, which ``tests/test_kernels.py`` decodes on CPU as FA4's SM90 kernel reads
them, and which matched the reference on the H100 in ``tools/gpu_check.py``'s two varlen cases,
``results/kernels/h100/fa4-varlen/``). It also runs the calls that spec §6 makes dense (the
``dense`` stage: ``flash_attn_func`` without block lists, GQA native): 1.09–1.19× cuDNN dense at
16K–128K on the H200 (32/8 heads, D=128, ``results/kernels/h200/structured/``). Installed with ``pip install
rrattention[fa4]``; without it, or where FA4 is wrong or untested, dispatch falls back to the Triton
kernel (the reference's SDPA for dense calls) and says why.
"""

from __future__ import annotations

import torch

from .base import DENSE, KernelBackend, Packed, Problem, Selection, causal_flops

# Below this much dense attention work per call FA4's host launch cost (a few hundred microseconds of
# Python per call on the H200's host) outweighs its faster kernel: SmolLM2's prefill (9 query heads,
# D=64) ran 0.99x SDPA at 16K tokens with FA4 against 1.08x with the Triton kernel, and 1.30x
# against 1.24x at 32K (tools/bench_prefill.py, results/prefill/h200/). The break-even is put at
# SmolLM2's 32K call.
MIN_DENSE_FLOPS = causal_flops(1, 9, 32768, 32768, 64)

# Head dims whose block-sparse stage the Triton kernel runs faster: at D=64 (9/3 heads, 32K) on
# SmolLM2's own masks 32.9 ms against FA4's 35.5 for the 30 layers, on random masks 1.47 against
# 1.49 ms (d=0.5), and SmolLM2's prefill 1.52x SDPA at 32K without FA4 against 1.41x with it.
SLOWER_THAN_TRITON_HEAD_DIMS = frozenset({64})

def architecture_reasons(capability: tuple[int, int]) -> list[str]:
    """Why FA4's block-sparse forward is not used on a GPU of this compute capability."""
    if capability[0] == 9:
        return []
    if capability[0] == 8:
        return [f"SM{capability[0]}{capability[1]}: FA4's SM80 path silently ignores block-sparse masks "
                "(Dao-AILab/flash-attention#2897)"]
    if capability[0] == 10:
        return [f"SM{capability[0]}{capability[1]}: FA4 forces 256-row query blocks with block sparsity "
                "(Dao-AILab/flash-attention#2727), not our 128-row blocks"]
    return [f"SM{capability[0]}{capability[1]}: FA4's block-sparse forward is verified here on SM90 only"]


class FA4Backend(KernelBackend):  # its block lists are a Triton kernel
    name = "fa4"
    description = "FlashAttention-4 block-sparse and dense forward (flash-attn-4, SM90; attention stages)"
    stages = frozenset({"attention", DENSE})
    devices = frozenset({"cuda"})
    dtypes = frozenset({torch.float16, torch.bfloat16})
    block_sizes = frozenset({128})
    varlen = True  # attend(packed=...)
    requires = ("flash_attn.cute", "cutlass")
    head_dims = frozenset({64, 128})  # SM90 tiles of 192 and 256 do not match 128-token KV blocks

    def limits(self, stage: str, problem: Problem) -> list[str]:
        reasons = []
        if problem.head_dim is not None and problem.head_dim not in self.head_dims:
            reasons.append(f"head dim {problem.head_dim} not in {sorted(self.head_dims)} (FA4's SM90 tile must "
                           "match 128-token key blocks; dense calls: the head dims verified here)")
        if problem.device.type == "cuda" and torch.cuda.is_available():
            reasons += architecture_reasons(torch.cuda.get_device_capability(problem.device))
        return reasons + self.preference_reasons(stage, problem)

    @staticmethod
    def preference_reasons(stage: str, problem: Problem) -> list[str]:
        """Why dispatch passes FA4 over for a call it can run: slower there than the Triton kernel.
        ``tools/gpu_check.py`` checks FA4's results wherever these are the only reasons."""
        reasons = []
        if stage == "attention" and problem.head_dim in SLOWER_THAN_TRITON_HEAD_DIMS:
            reasons.append(f"head dim {problem.head_dim}: the Triton kernel's 64-row tiles measured faster on the "
                           "H200 (results/kernels/h200/model-masks/)")
        if problem.dense_flops is not None and problem.dense_flops < MIN_DENSE_FLOPS:
            reasons.append(f"{problem.dense_flops:.2g} dense FLOPs per call are below FA4's measured break-even "
                           f"({MIN_DENSE_FLOPS:.2g}): its host launch cost outweighs its faster kernel")
        return reasons

    def attend(self, q, k, v, selection: Selection, *, block_size: int, scale: float, packed: Packed | None = None,
               out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from flash_attn.cute import flash_attn_func, flash_attn_varlen_func
        from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

        from ..kernels.block_lists import block_lists, varlen_block_lists

        if packed is not None:  # q [Tq, Hq, D], k, v [Tk, Hkv, D]: FA4's own varlen layout
            # a mask shared across sequences or heads gets one list per (sequence, head), as FA4 reads them
            mask = selection.block_mask.expand(packed.cu_seqlens_q.numel() - 1, q.shape[1], -1, -1)
            partial_count, partial_index, full_count, full_index, cu_rows, cu_lists = varlen_block_lists(
                mask, packed.cu_seqlens_q, packed.cu_seqlens_k, block_size=block_size, launches=self.launches)
            lists = BlockSparseTensorsTorch(partial_count, partial_index, full_count, full_index, cu_rows, cu_lists,
                                            block_size=(block_size, block_size))
            result, lse = flash_attn_varlen_func(q, k, v, cu_seqlens_q=packed.cu_seqlens_q,
                                                 cu_seqlens_k=packed.cu_seqlens_k, max_seqlen_q=packed.max_seqlen_q,
                                                 max_seqlen_k=packed.max_seqlen_k, softmax_scale=scale, causal=True,
                                                 pack_gqa=False, block_sparse_tensors=lists, return_lse=True)
            return (result, lse) if out is None else (out.copy_(result), lse)  # lse [Hq, Tq]
        partial_count, partial_index, full_count, full_index = block_lists(
            selection.block_mask, q_len=q.shape[2], k_len=k.shape[2], block_size=block_size, launches=self.launches)
        lists = BlockSparseTensorsTorch(partial_count, partial_index, full_count, full_index,
                                        block_size=(block_size, block_size))
        result, lse = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale,
                                      causal=True, pack_gqa=False, block_sparse_tensors=lists, return_lse=True)
        result = result.transpose(1, 2)  # [B, Hq, Lq, D]
        return (result, lse) if out is None else (out.copy_(result), lse)

    def dense_attend(self, q, k, v, *, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
        from flash_attn.cute import flash_attn_func

        # [B, L, H, D] views: a framework's q/k/v (transposed from that layout) go in without a copy
        result, _ = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale,
                                    causal=True)
        result = result.transpose(1, 2)
        return result if out is None else out.copy_(result)
