"""HELMET recall (JSON KV, RULER MK/MV-NIAH; SubEM / recall) and RAG (KILT NQ, TriviaQA, PopQA,
HotpotQA; SubEM) from HELMET's files; the prompts are those of the generated recall tasks.

RAG runs 0-shot (HELMET adds 2 demonstrations from a train file). The chat template is used when
the model has one, with the answer prefix after it (as the generated recall tasks do).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..base import ModelContext
from ..metrics import string_match_all, substring_exact_match
from ..recall import JSON_KV_SYSTEM, JSON_KV_USER, MV_SYSTEM, MV_USER, NIAH_SYSTEM, NIAH_USER, prompt_ids
from .common import first, read_jsonl

JSON_KV_K = {8192: 105, 16384: 220, 32768: 440, 65536: 900, 131072: 1800}
KILT_K = {8192: 50, 16384: 105, 32768: 220, 65536: 440, 131072: 1000}
RULER_DIRS = {"ruler_niah_mk_2": "niah_multikey_2", "ruler_niah_mk_3": "niah_multikey_3", "ruler_niah_mv": "niah_multivalue"}
RAG_USER = ("Use the given documents to write a concise and short answer to the question. Write your answer in the "
            "following format:\nAnswer: [answer]\n\n{context}\n\nQuestion: {question}")
RAG_SYSTEM = "Answer:"


@dataclass(frozen=True)
class RecallRag:
    dataset: str
    file: str | None = None  # a file relative to data_dir instead of HELMET's name for the length
    max_new_tokens: int | None = None

    @property
    def primary_metric(self) -> str:
        return "recall" if self.dataset.startswith("ruler") else "subem"

    def path(self, data_dir: Path, length: int) -> Path:
        if self.file is not None:
            return data_dir / self.file
        table = JSON_KV_K if self.dataset == "json_kv" else KILT_K
        if self.dataset not in RULER_DIRS and length not in table:
            raise ValueError(f"helmet {self.dataset}: no HELMET file for length {length}; lengths: {sorted(table)}")
        if self.dataset == "json_kv":
            return data_dir / "json_kv" / f"test_k{JSON_KV_K[length]}_dep6.jsonl"
        if self.dataset in RULER_DIRS:
            return data_dir / "ruler" / RULER_DIRS[self.dataset] / f"validation_{length}.jsonl"
        name = self.dataset.removeprefix("kilt_")
        dep = 3 if name == "hotpotqa" else 6
        return data_dir / "kilt" / f"{name}-dev-multikilt_1000_k{KILT_K[length]}_dep{dep}.jsonl"

    def make_samples(self, ctx: ModelContext, data_dir: Path, length: int, n: int, seed: int) -> list[dict]:
        path = self.path(data_dir, length)
        return [{"record": r, **self._prompt(r)} for r in first(read_jsonl(path), n, path)]

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
        default = 50 if self.dataset.startswith(("json", "ruler")) else 20  # HELMET: recall 50 (JSON KV 100), RAG 20
        budget = self.max_new_tokens or (100 if self.dataset == "json_kv" else default)
        output, sparsity = ctx.generate(prompt_ids(ctx, sample["user"], sample["system"]), budget)
        if self.primary_metric == "recall":
            return {"recall": string_match_all(output, sample["answers"]), "sparsity": sparsity}
        return {"subem": substring_exact_match(output, sample["answers"]), "sparsity": sparsity}
