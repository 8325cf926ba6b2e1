"""Fidelity to full attention on natural text: NLL of the last tokens (ΔNLL vs full) and the mean
next-token KL(full ‖ method) over them. Works with any model; windows come from the corpus."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import ModelContext, corpus_window


@dataclass(frozen=True)
class Fidelity:
    last_tokens: int = 256
    name: str = "fidelity"
    primary_metric: str = "delta_nll"
    higher_is_better: bool = False

    def __post_init__(self):
        if isinstance(self.last_tokens, bool) or not isinstance(self.last_tokens, int) or self.last_tokens < 1:
            raise ValueError(f"last_tokens must be an int >= 1, got {self.last_tokens!r}")

    def check_length(self, length: int) -> None:
        """The scored tokens need at least one token of context before them."""
        if self.last_tokens >= length:
            raise ValueError(f"last_tokens ({self.last_tokens}) must be smaller than every length, got length {length}")

    def make_samples(self, ctx: ModelContext, length: int, n: int, seed: int) -> list[dict]:
        rng = np.random.default_rng([seed, length, 1])
        return [{"ids": corpus_window(ctx, length, rng)} for _ in range(n)]

    def evaluate(self, ctx: ModelContext, sample: dict) -> dict[str, float]:
        ids = torch.tensor(sample["ids"])[None]
        keep = self.last_tokens + 1  # logits at positions L−N−1 … L−1 predict the last N tokens (+ one unused)
        targets = ids[0, -self.last_tokens:].to(ctx.device)
        full = ctx.full_logits(hash(tuple(sample["ids"])), ids, keep)[:-1]
        method, sparsity = ctx.logits(ids, keep)
        method = method[:-1]
        nll = lambda logits: float(torch.nn.functional.cross_entropy(logits, targets))  # noqa: E731
        log_full, log_method = full.log_softmax(-1), method.log_softmax(-1)
        kl = float((log_full.exp() * (log_full - log_method)).sum(-1).mean())
        return {"nll": nll(method), "nll_full": nll(full), "delta_nll": nll(method) - nll(full), "kl": kl,
                "sparsity": sparsity}
