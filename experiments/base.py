"""What a task is, and the model context every task evaluates with.

A task makes deterministic samples (``make_samples(ctx, length, n, seed)``: JSON-serialisable
dicts) and scores one sample under the context's current method (``evaluate(ctx, sample)`` →
metrics). The context runs the model with the method being evaluated or with full attention; full
attention results are cached per sample, so comparing several methods costs one dense pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

import rrattention as rr
from rrattention.config import AttentionConfig


class Task(Protocol):
    name: str
    primary_metric: str  # the column tables and plots show
    higher_is_better: bool

    def make_samples(self, ctx: "ModelContext", length: int, n: int, seed: int) -> list[dict]: ...

    def evaluate(self, ctx: "ModelContext", sample: dict) -> dict[str, float]: ...


@dataclass
class ModelContext:
    """A loaded model and tokenizer (and, for a vision-language model, its processor), switched
    between methods without reloading."""

    model: Any
    tokenizer: Any
    device: torch.device
    text: Callable[[], str]  # the haystack corpus, loaded on first use
    method_cfg: AttentionConfig | None = None
    processor: Any = None  # a VLM's own processor (images, videos and text → model inputs)
    # [dense, all] prefill attention calls under the method since the last take_dense_fraction()
    _prefill_calls: list = field(default_factory=lambda: [0, 0])
    _full_cache: dict = field(default_factory=dict)
    _corpus: str | None = None

    @property
    def corpus(self) -> str:
        if self._corpus is None:
            self._corpus = self.text()
        return self._corpus

    def use_method(self, cfg: AttentionConfig) -> None:
        self.method_cfg = cfg
        rr.hf.configure(self.model, cfg)

    @contextlib.contextmanager
    def full_attention(self):
        self.model.set_attn_implementation("sdpa")
        try:
            yield
        finally:
            if self.method_cfg is not None:
                rr.hf.configure(self.model, self.method_cfg)
            else:
                self.model.set_attn_implementation("sdpa")

    def logits(self, ids: torch.Tensor, keep: int) -> tuple[torch.Tensor, float]:
        """fp32 logits of the last ``keep`` positions under the current method, and its prefill
        sparsity (spec §6: mean over layers)."""
        with torch.no_grad(), rr.hf.collect_stats(self.model) as stats:
            out = self.model(ids.to(self.device), logits_to_keep=keep).logits[0].float()
        return out, self._prefill_sparsity(stats)

    def cached(self, key, compute: Callable[[], Any]):
        """``compute()`` once per ``key``: a full-attention result shared by all methods of a sample.
        Samples are visited one at a time, so only the current sample's results are kept."""
        if key not in self._full_cache:
            self._full_cache.clear()
            self._full_cache[key] = compute()
        return self._full_cache[key]

    def full_logits(self, key, ids: torch.Tensor, keep: int) -> torch.Tensor:
        """Logits under full attention, cached by ``key`` (one sample's identity)."""

        def compute():
            with self.full_attention(), torch.no_grad():
                return self.model(ids.to(self.device), logits_to_keep=keep).logits[0].float()

        return self.cached(("logits", key, keep), compute)

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> tuple[str, float]:
        """Greedy continuation (prefill under the method, decode dense) and the prefill sparsity."""
        with torch.no_grad(), rr.hf.collect_stats(self.model) as stats:
            out = self.model.generate(prompt_ids.to(self.device), max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.eos_token_id)
        text = self.tokenizer.decode(out[0, prompt_ids.shape[1]:], skip_special_tokens=True)
        return text, self._prefill_sparsity(stats)

    def generate_multimodal(self, inputs, max_new_tokens: int) -> tuple[str, float, dict[str, int]]:
        """Greedy continuation of a processor's inputs (one prompt; prefill under the method, decode
        dense), its prefill sparsity (the language model's causal calls; the vision tower runs dense
        and is left out) and the prompt's token counts: visual (image and video placeholder tokens),
        text and the whole prefill."""
        ids = inputs["input_ids"]
        visual_ids = [getattr(self.model.config, name, None) for name in
                      ("image_token_id", "video_token_id", "image_token_index", "video_token_index")]
        visual = int(torch.isin(ids, torch.tensor([i for i in visual_ids if i is not None], dtype=ids.dtype)).sum())
        tokens = {"visual_tokens": visual, "text_tokens": int(ids.shape[1]) - visual, "prefill_tokens": int(ids.shape[1])}
        pad = getattr(self.tokenizer, "pad_token_id", None)
        dtype = self.model.dtype  # pixels in the model's dtype, ids and grids as they are
        inputs = {k: v.to(self.device, dtype) if torch.is_floating_point(v) else v.to(self.device)
                  for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        with torch.no_grad(), rr.hf.collect_stats(self.model) as stats:
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=pad if pad is not None else self.tokenizer.eos_token_id)
        text = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return text, self._prefill_sparsity(stats), tokens

    def _prefill_sparsity(self, stats) -> float:
        """spec §6 sparsity of the collected prefill calls (0 if none), counting those that ran dense."""
        prefill = stats.prefill_records()
        self._prefill_calls[0] += sum(r.is_dense for r in prefill)
        self._prefill_calls[1] += len(prefill)
        sparsity = stats.sparsity()
        return 0.0 if sparsity != sparsity else sparsity  # NaN: no prefill call recorded

    def take_dense_fraction(self) -> float | None:
        """The fraction of prefill attention calls under the method that ran dense (a policy of
        spec §6: ``min_sparse_len``, ``dense_layers``, another mask) since the last call; None if none ran."""
        dense, total = self._prefill_calls
        self._prefill_calls[:] = [0, 0]
        return dense / total if total else None


def corpus_window(ctx: ModelContext, n_tokens: int, rng) -> list[int]:
    """``n_tokens`` consecutive tokens of the corpus from a random character offset."""
    text = ctx.corpus
    chars = n_tokens * 8  # comfortably more characters than tokens
    start = int(rng.integers(0, max(1, len(text) - chars)))
    ids = ctx.tokenizer(text[start : start + chars], add_special_tokens=False).input_ids
    if len(ids) < n_tokens:
        raise ValueError(f"corpus window too short: {len(ids)} < {n_tokens} tokens")
    return ids[:n_tokens]
