"""HELMET in-context learning: thousands of labelled examples, labels mapped to shuffled integers,
scored by exact match of the predicted label.

HELMET loads these datasets from the HuggingFace Hub; offline, each is a folder under
``data_dir/icl/`` holding ``train.jsonl`` and ``test.jsonl`` exported from HELMET's splits (for
``clinic150`` the ``validation`` split is the test set; for ``nlu`` the test set is
``train.train_test_split(test_size=0.1, seed=42)["test"]``), e.g.::

    load_dataset("PolyAI/banking77")["train"].to_json("data/icl/banking77/train.jsonl")

No chat template, 20 new tokens, generation stops at the first newline; the shot count per length is
HELMET's (its dataset names, e.g. ``icl_banking77_360shot_balance`` at 8K).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path

from ..base import ModelContext
from .common import calculate_metrics, first, fit_context, generate, hf_shuffle, parse_output, read_jsonl

# dataset: (folder, label field, number of labels, shots per length)
DATASETS = {
    "trec_coarse": ("trec", "coarse_label", 6, {8192: 400, 16384: 800, 32768: 1600, 65536: 3300, 131072: 6600}),
    "trec_fine": ("trec", "fine_label", 50, {8192: 400, 16384: 800, 32768: 1600, 65536: 3200, 131072: 6400}),
    "banking77": ("banking77", "label", 77, {8192: 360, 16384: 720, 32768: 1450, 65536: 2900, 131072: 5900}),
    "clinic150": ("clinic150", "intent", 151, {8192: 440, 16384: 880, 32768: 1750, 65536: 3525, 131072: 7050}),
    "nlu": ("nlu", "label", 68, {8192: 510, 16384: 1020, 32768: 2040, 65536: 4080, 131072: 8296}),
}
USER = ("Use the provided mapping from the text to label to assign a label to the text. Only output \"label: {{label}}\" "
        "and nothing else. \n\n{context}\n\n{question}")
SYSTEM = "label:"
TEST_SAMPLES = 500
SEED = 42


def balance_labels(rows: list[dict], label: str, count: int, seed: int) -> list[dict]:
    """``count`` rows in rounds of one row per label, each round shuffled (HELMET's ``balance_labels``)."""
    rand = random.Random(seed)
    by_label: dict = {}
    for row in rows:
        by_label.setdefault(row[label], []).append(row)
    rounds = math.ceil(count / len(by_label))
    chosen: list[list[dict]] = [[] for _ in range(rounds)]
    for group in by_label.values():
        indices = rand.sample(range(len(group)), rounds % len(group))
        while len(indices) < rounds:
            indices += rand.sample(range(len(group)), min(rounds - len(indices), len(group)))
        for i, index in enumerate(indices):
            chosen[i].append(group[index])
    for group in chosen:
        rand.shuffle(group)
    return [row for group in chosen for row in group][:count]


def _render(fields: dict) -> tuple[str, str]:
    return USER.format(**fields), SYSTEM


@dataclass(frozen=True)
class ICL:
    dataset: str
    primary_metric: str = "exact_match"
    max_new_tokens: int = 20

    def path(self, data_dir: Path, split: str) -> Path:
        return data_dir / "icl" / DATASETS[self.dataset][0] / f"{split}.jsonl"

    def make_samples(self, ctx: ModelContext, data_dir: Path, length: int, n: int, seed: int) -> list[dict]:
        _, label, num_labels, shots = DATASETS[self.dataset]
        if length not in shots:
            raise ValueError(f"helmet icl_{self.dataset}: HELMET defines no shot count for length {length}; lengths: {sorted(shots)}")
        train, test = read_jsonl(self.path(data_dir, "train")), read_jsonl(self.path(data_dir, "test"))
        if len(test) > TEST_SAMPLES:
            test = balance_labels([test[i] for i in hf_shuffle(len(test), SEED)], label, TEST_SAMPLES, SEED)
        samples = []
        for row in first(test, n, self.path(data_dir, "test")):
            local_seed = (int(hashlib.sha256(row["text"].encode()).hexdigest(), 16) + SEED) % 2**31
            demos = balance_labels(train, label, shots[length], local_seed)
            mapping = list(range(num_labels))
            random.Random(local_seed).shuffle(mapping)
            fields = {"context": "\n\n".join(f"{d['text']}\nlabel: {mapping[int(d[label])]}" for d in demos),
                      "question": row["text"]}
            fields = fit_context(ctx, fields, _render, length - self.max_new_tokens, chat=False)
            samples.append({"user": _render(fields)[0], "system": SYSTEM, "answer": str(mapping[int(row[label])])})
        return samples

    def evaluate(self, ctx: ModelContext, sample: dict) -> dict[str, float]:
        output, sparsity = generate(ctx, sample, self.max_new_tokens, chat=False, stop_new_line=True)
        parsed = parse_output(output, SYSTEM) or ""
        return {"exact_match": calculate_metrics(parsed, sample["answer"])["exact_match"], "sparsity": sparsity}
