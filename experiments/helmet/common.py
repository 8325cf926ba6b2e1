"""What every HELMET category shares: reading its files, building the prompt, generating, and the
answer parsing and metrics of HELMET's ``utils.py``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ..base import ModelContext
from ..metrics import normalize_answer


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"no HELMET file {path}")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_json(path: Path) -> list | dict:
    if not path.exists():
        raise FileNotFoundError(f"no HELMET file {path}")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def first(records: list[dict], n: int, path: Path) -> list[dict]:
    if len(records) < n:
        raise ValueError(f"{path} holds {len(records)} samples, {n} asked")
    return records[:n]


def hf_shuffle(n: int, seed: int) -> np.ndarray:
    """The order ``datasets.Dataset.shuffle(seed=seed)`` gives ``n`` rows."""
    return np.random.default_rng(seed).permutation(n)


def prompt_ids(ctx: ModelContext, user: str, system: str, *, chat: bool) -> torch.Tensor:
    """HELMET's prompt: with the chat template, the user turn alone (the answer prefix is neither sent
    nor prepended); without it, ``user + "\\n" + system`` tokenised with special tokens."""
    tok = ctx.tokenizer
    if chat and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        return torch.tensor([tok(text, add_special_tokens=False).input_ids])
    return torch.tensor([tok(user + "\n" + system).input_ids])


def generate(ctx: ModelContext, sample: dict, max_new_tokens: int, *, chat: bool, stop_new_line: bool) -> tuple[str, float]:
    """Greedy output, cut at its first newline where HELMET stops generation there, with the
    answer prefix prepended where HELMET prepends it (its configs without the chat template); and
    the prefill sparsity."""
    output, sparsity = ctx.generate(prompt_ids(ctx, sample["user"], sample["system"], chat=chat), max_new_tokens)
    if stop_new_line:
        output = output.split("\n", 1)[0]
    if not chat:
        output = sample["system"] + output
    return output, sparsity


def fit_context(ctx: ModelContext, fields: dict, render, budget: int, *, chat: bool) -> dict:
    """``fields`` with the end of ``fields["context"]`` cut so that the prompt ``render(fields)`` →
    ``(user, system)`` has at most ``budget`` tokens, as HELMET cuts inputs longer than the window."""
    count = lambda f: prompt_ids(ctx, *render(f), chat=chat).shape[1]  # noqa: E731
    if count(fields) <= budget:
        return fields
    text = fields["context"]
    lo, hi = 0, len(text)
    while hi - lo > 1:  # the longest prefix of the context that fits
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count({**fields, "context": text[:mid]}) <= budget else (lo, mid)
    return {**fields, "context": text[:lo]}


def parse_output(output: str, prefix: str = "Answer:") -> str | None:
    """The rest of the line after the first ``prefix``; else the first line (HELMET's ``parse_output``)."""
    for pattern in (re.compile(f"(?:{prefix})(.*)(?:\n|$)", re.IGNORECASE), re.compile(r"(?:^)(.*)(?:\n|$)")):
        match = pattern.search(output)
        if match:
            return re.sub("^" + re.escape(prefix), "", match[1].strip(), flags=re.IGNORECASE).strip()
    return None


def _flatten(answers) -> list[str]:
    answers = [answers] if isinstance(answers, str) else answers
    return [a for x in answers for a in (x if isinstance(x, list) else [x])]


def f1_score(prediction: str, truth: str) -> float:
    from collections import Counter

    pred, gold = normalize_answer(prediction), normalize_answer(truth)
    if (pred in ("yes", "no", "noanswer") or gold in ("yes", "no", "noanswer")) and pred != gold:
        return 0.0
    common = sum((Counter(pred.split()) & Counter(gold.split())).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred.split()), common / len(gold.split())
    return 2 * precision * recall / (precision + recall)


def calculate_metrics(prediction: str, answers) -> dict[str, float]:
    """HELMET's ``calculate_metrics``: EM, F1, SubEM and ROUGE-L (F1, recall), each the max over answers."""
    from rouge_score import rouge_scorer

    answers = _flatten(answers)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(target=a, prediction=prediction)["rougeL"] for a in answers]
    return {
        "exact_match": float(max(normalize_answer(prediction) == normalize_answer(a) for a in answers)),
        "f1": max(f1_score(prediction, a) for a in answers),
        "substring_exact_match": float(max(normalize_answer(a) in normalize_answer(prediction) for a in answers)),
        "rougeL_f1": max(r.fmeasure for r in rouge),
        "rougeL_recall": max(r.recall for r in rouge),
    }


def default_post_process(output: str, answers, prefix: str = "Answer:") -> dict[str, float]:
    """Metrics of the raw output and of its parsed answer, the better of the two per metric."""
    metrics = calculate_metrics(output, answers)
    parsed = parse_output(output, prefix)
    if parsed is not None:
        metrics = {k: max(v, calculate_metrics(parsed, answers)[k]) for k, v in metrics.items()}
    return metrics
