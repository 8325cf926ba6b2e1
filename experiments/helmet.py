"""HELMET from local data: the files a user downloaded from HELMET (princeton-nlp/HELMET,
``data/``), read in their own format and scored with their own metrics where no LLM judge is needed.

    tasks:
      - name: helmet
        settings: {data_dir: /path/to/HELMET/data, categories: [recall, rag]}

expands to one task per dataset of the categories. Files per length follow HELMET's configs:

==========  ==============================================================  ============
category    files (``{L}`` tokens; ``{k}`` from HELMET's length ↔ size map)  metric
==========  ==============================================================  ============
recall      ``json_kv/test_k{k}_dep6.jsonl``,                                SubEM,
            ``ruler/niah_multikey_{2,3}/validation_{L}.jsonl``,              recall
            ``ruler/niah_multivalue/validation_{L}.jsonl``
rag         ``kilt/{nq,triviaqa,popqa}-dev-multikilt_1000_k{k}_dep6.jsonl``,  SubEM
            ``kilt/hotpotqa-dev-multikilt_1000_k{k}_dep3.jsonl``
==========  ==============================================================  ============

``rerank``, ``icl``, ``longqa`` and ``cite`` are not read yet (their metrics need ranked lists,
HF datasets on disk, ROUGE or an NLI model): asking for them is an error. RAG runs 0-shot (HELMET
uses 2 demonstrations from a train file). Samples are the first ``samples`` lines of each file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .base import ModelContext
from .metrics import string_match_all, substring_exact_match
from .recall import JSON_KV_SYSTEM, JSON_KV_USER, MV_SYSTEM, MV_USER, NIAH_SYSTEM, NIAH_USER

CATEGORIES = {
    "recall": ("json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv"),
    "rag": ("kilt_nq", "kilt_triviaqa", "kilt_popqa", "kilt_hotpotqa"),
}
UNSUPPORTED = ("rerank", "icl", "longqa", "cite", "summ")
JSON_KV_K = {8192: 105, 16384: 220, 32768: 440, 65536: 900, 131072: 1800}
KILT_K = {8192: 50, 16384: 105, 32768: 220, 65536: 440, 131072: 1000}
RULER_DIRS = {"ruler_niah_mk_2": "niah_multikey_2", "ruler_niah_mk_3": "niah_multikey_3", "ruler_niah_mv": "niah_multivalue"}
RAG_USER = ("Use the given documents to write a concise and short answer to the question. Write your answer in the "
            "following format:\nAnswer: [answer]\n\n{context}\n\nQuestion: {question}")
RAG_SYSTEM = "Answer:"


def expand(settings: dict) -> list[dict]:
    """``{data_dir, categories}`` → one task settings dict per dataset."""
    categories = settings.get("categories") or ["recall"]
    for category in categories:
        if category in UNSUPPORTED:
            raise ValueError(f"helmet category {category!r} is not supported yet; supported: {sorted(CATEGORIES)}")
        if category not in CATEGORIES:
            raise ValueError(f"unknown helmet category {category!r}; expected one of {sorted(CATEGORIES)}")
    if "data_dir" not in settings:
        raise ValueError("helmet needs settings.data_dir: the folder holding HELMET's data")
    extra = {k: v for k, v in settings.items() if k not in ("categories",)}
    return [{**extra, "dataset": d} for c in categories for d in CATEGORIES[c]]


@dataclass(frozen=True)
class HelmetLocal:
    data_dir: str
    dataset: str
    max_new_tokens: int | None = None
    higher_is_better: bool = True
    file: str | None = None  # override the file (relative to data_dir), e.g. for other sizes

    def __post_init__(self):
        if self.dataset not in {d for ds in CATEGORIES.values() for d in ds}:
            raise ValueError(f"unknown helmet dataset {self.dataset!r}")

    @property
    def name(self) -> str:
        return f"helmet_{self.dataset}"

    @property
    def primary_metric(self) -> str:
        return "recall" if self.dataset.startswith("ruler") else "subem"

    def path(self, length: int) -> Path:
        root = Path(self.data_dir)
        if self.file is not None:
            return root / self.file
        if self.dataset == "json_kv":
            return root / "json_kv" / f"test_k{JSON_KV_K[length]}_dep6.jsonl"
        if self.dataset in RULER_DIRS:
            return root / "ruler" / RULER_DIRS[self.dataset] / f"validation_{length}.jsonl"
        name = self.dataset.removeprefix("kilt_")
        dep = 3 if name == "hotpotqa" else 6
        return root / "kilt" / f"{name}-dev-multikilt_1000_k{KILT_K[length]}_dep{dep}.jsonl"

    def make_samples(self, ctx: ModelContext, length: int, n: int, seed: int) -> list[dict]:
        path = self.path(length)
        if not path.exists():
            raise FileNotFoundError(f"{self.name}: no HELMET file {path} for length {length}")
        with open(path, encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()][:n]
        if len(records) < n:
            raise ValueError(f"{path} holds {len(records)} samples, {n} asked")
        return [{"record": r, **self._prompt(r)} for r in records]

    def _prompt(self, r: dict) -> dict:
        if self.dataset == "json_kv":
            return {"user": JSON_KV_USER.format(context=r["context"], question=r["question"]), "system": JSON_KV_SYSTEM,
                    "answers": [r["answer"]] if isinstance(r["answer"], str) else r["answer"]}
        if self.dataset in RULER_DIRS:
            user, system = (MV_USER, MV_SYSTEM) if self.dataset == "ruler_niah_mv" else (NIAH_USER, NIAH_SYSTEM)
            fields = {"type_needle_v": r.get("type_needle_v", "numbers"), "context": r["context"], "query": r["query"]}
            return {"user": user.format(**fields), "system": system.format(**fields), "answers": r.get("answer", r.get("outputs"))}
        context = "\n\n".join(f"Document (Title: {c['title']}): {c['text']}" for c in r["ctxs"])
        return {"user": RAG_USER.format(context=context, question=r["question"]), "system": RAG_SYSTEM, "answers": r["answers"]}

    def evaluate(self, ctx: ModelContext, sample: dict) -> dict[str, float]:
        from .recall import prompt_ids

        default = 50 if self.dataset.startswith(("json", "ruler")) else 20  # HELMET: recall 50 (JSON KV 100), RAG 20
        budget = self.max_new_tokens or (100 if self.dataset == "json_kv" else default)
        output, sparsity = ctx.generate(prompt_ids(ctx, sample["user"], sample["system"]), budget)
        if self.primary_metric == "recall":
            return {"recall": string_match_all(output, sample["answers"]), "sparsity": sparsity}
        return {"subem": substring_exact_match(output, sample["answers"]), "sparsity": sparsity}
