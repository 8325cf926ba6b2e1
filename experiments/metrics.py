"""Answer metrics as HELMET computes them (no LLM judge)."""

from __future__ import annotations

import re
import string


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the SQuAD normalisation HELMET uses)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def substring_exact_match(prediction: str, answers: str | list[str]) -> float:
    """SubEM: 1 if any normalised answer occurs in the normalised prediction."""
    answers = [answers] if isinstance(answers, str) else answers
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(a) in pred for a in answers))


def exact_match(prediction: str, answers: str | list[str]) -> float:
    answers = [answers] if isinstance(answers, str) else answers
    return float(any(normalize_answer(a) == normalize_answer(prediction) for a in answers))


def string_match_all(prediction: str, answers: list[str]) -> float:
    """RULER's recall: the fraction of the reference strings found (case-insensitive) in the prediction."""
    return sum(a.lower() in prediction.lower() for a in answers) / len(answers)
