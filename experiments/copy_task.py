"""In-context copy: a passage of random words is inserted at a random depth of a natural-text
haystack and repeated at the end; the score is the teacher-forced next-token accuracy over the
repeat, after its first ``skip_words`` words (which cue the model that a copy has started).

A long-range retrieval task a 135M model can do (SmolLM2 with full attention: about 0.84 / 0.75 /
0.61 at 2K / 4K / 8K tokens), so sparse methods can be told apart from chance."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .base import ModelContext, corpus_window


@dataclass(frozen=True)
class InContextCopy:
    passage_words: int = 40
    skip_words: int = 8
    min_depth: float = 0.05
    max_depth: float = 0.5
    name: str = "copy"
    primary_metric: str = "accuracy"
    higher_is_better: bool = True

    def make_samples(self, ctx: ModelContext, length: int, n: int, seed: int) -> list[dict]:
        rng = np.random.default_rng([seed, length, 2])
        vocabulary = sorted(set(re.findall(r"\b[a-z]{3,10}\b", ctx.corpus[:2_000_000])))
        tok = lambda s: ctx.tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
        samples = []
        for _ in range(n):
            words = list(rng.choice(vocabulary, size=self.passage_words, replace=False))
            passage = tok(" " + " ".join(words))
            cue = tok(" " + " ".join(words[: self.skip_words]))
            haystack = corpus_window(ctx, length - 2 * len(passage), rng)
            depth = int(len(haystack) * rng.uniform(self.min_depth, self.max_depth))
            ids = haystack[:depth] + passage + haystack[depth:] + passage
            samples.append({"ids": ids, "score_from": len(ids) - len(passage) + len(cue), "depth": depth,
                            "passage_tokens": len(passage)})
        return samples

    def evaluate(self, ctx: ModelContext, sample: dict) -> dict[str, float]:
        ids = torch.tensor(sample["ids"])[None]
        scored = len(sample["ids"]) - sample["score_from"]
        logits, sparsity = ctx.logits(ids, scored + 1)
        predicted = logits[:-1].argmax(-1).cpu()
        accuracy = float((predicted == ids[0, sample["score_from"]:]).float().mean())
        return {"accuracy": accuracy, "sparsity": sparsity}
