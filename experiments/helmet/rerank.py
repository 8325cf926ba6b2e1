"""HELMET re-rank: MS MARCO passages ranked by the model, scored by NDCG@10 (trec_eval's ``ndcg_cut``).

Files: ``msmarco/test_reranking_data_k{k}_dep3.jsonl`` (one query per line: ``qid``, ``query``,
``ctxs`` of ``{id, text, label[, title]}``), demonstrations from ``..._k10_dep3.jsonl``; 2 shots,
no chat template, 200 new tokens, generation stops at the first newline.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..base import ModelContext
from .common import first, fit_context, generate, hf_shuffle, read_jsonl

K = {4096: 14, 8192: 50, 16384: 130, 32768: 285, 65536: 600, 131072: 1000}
USER = ("You are provided with a list of documents, each indicated by their ID. Rank each document based on their "
        "relevance to the question in descending order from most relelvant to least relevant texts. Include all "  # sic
        "documents in the rankings. Write your answer using the unique IDs, with the following format:\n"
        "Ranking: ID3 > ID1 > ID2\n\n{demos}{context}\n\nQuery: {question}")
SYSTEM = "Ranking:"
SHOTS = 2


def _passages(ctxs: list[dict], titled: bool) -> str:
    template = "[ID: {id}] Document (Title: {title}): {text}" if titled else "[ID: {id}] Document: {text}"
    return "\n\n".join(template.format(**c) for c in ctxs)


def _gold_ranking(ctxs: list[dict]) -> str:
    return " > ".join(c["id"] for c in sorted(ctxs, key=lambda c: int(c["label"]), reverse=True))


def parse_rankings(output: str) -> dict[str, int]:
    """Document id → score (higher ranks first) from the longest ``a > b > c`` chain in ``output``."""
    output = re.sub(r"[\[\]:]", "", output).lower().replace("id", "")
    longest = ""
    for match in re.finditer(r"(\d+)(?:\s*>\s*(\d+))*", output):
        if len(match.group(0)) > len(longest):
            longest = match.group(0)
    ranking = [x.strip() for x in longest.split(">") if x.strip().isdigit()] if longest else [output]
    scores: dict[str, int] = {}
    for i, doc in enumerate(ranking):
        scores.setdefault(doc, len(ranking) - i)
    return scores


def ndcg_at(scores: dict[str, int], qrels: dict[str, int], k: int = 10) -> float:
    """trec_eval ``ndcg_cut.k``: linear gains (the graded labels), ``log2(rank + 1)`` discounts, ideal
    ordering from the judgements; ties in score broken by document id, descending, as trec_eval does."""
    ranked = sorted(scores, key=lambda d: (scores[d], d), reverse=True)[:k]
    dcg = sum(qrels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def _render(fields: dict) -> tuple[str, str]:
    return USER.format(**fields), SYSTEM


@dataclass(frozen=True)
class Rerank:
    primary_metric: str = "ndcg@10"
    max_new_tokens: int = 200

    def path(self, data_dir: Path, length: int) -> Path:
        if length not in K:
            raise ValueError(f"helmet msmarco: no HELMET file for length {length}; lengths: {sorted(K)}")
        return data_dir / "msmarco" / f"test_reranking_data_k{K[length]}_dep3.jsonl"

    def make_samples(self, ctx: ModelContext, data_dir: Path, length: int, n: int, seed: int) -> list[dict]:
        path = self.path(data_dir, length)
        data = read_jsonl(path)
        qids = sorted({r["qid"] for r in data})
        keep = set(random.Random(seed).sample(qids, min(100, len(qids))))  # HELMET's 100-query subset
        tests = [r for r in data if r["qid"] in keep]
        demos = read_jsonl(data_dir / "msmarco" / "test_reranking_data_k10_dep3.jsonl")
        if len(demos) > 2 * len(tests):  # HELMET drops every test query from a large demo pool at once
            demos = [d for d in demos if d["qid"] not in keep]
        samples = []
        for r in first(tests, n, path):
            titled = "title" in r["ctxs"][0]
            pool = [d for d in demos if d["qid"] != r["qid"]]
            h = abs(int(hashlib.sha256(r["qid"].encode()).hexdigest(), 16) % 2**31)
            chosen, seen = [], set()
            for i in hf_shuffle(len(pool), h):
                if pool[i]["qid"] not in seen and len(chosen) < SHOTS:
                    seen.add(pool[i]["qid"])
                    chosen.append(pool[i])
            demo_text = "".join(f"{_passages(d['ctxs'], titled)}\n\nQuery: {d['query']}\nRanking: {_gold_ranking(d['ctxs'])}\n\n"
                                for d in chosen)
            fields = {"demos": demo_text, "context": _passages(r["ctxs"], titled), "question": r["query"]}
            fields = fit_context(ctx, fields, _render, length - self.max_new_tokens, chat=False)
            samples.append({"user": _render(fields)[0], "system": SYSTEM, "qrels": {c["id"]: int(c["label"]) for c in r["ctxs"]}})
        return samples

    def evaluate(self, ctx: ModelContext, sample: dict) -> dict[str, float]:
        output, sparsity = generate(ctx, sample, self.max_new_tokens, chat=False, stop_new_line=True)
        scores = parse_rankings(output)
        return {"ndcg@10": ndcg_at(scores, sample["qrels"], 10), "ndcg@5": ndcg_at(scores, sample["qrels"], 5),
                "num_preds": float(len(scores)), "sparsity": sparsity}
