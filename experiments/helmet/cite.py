"""HELMET citation (ALCE): answer from many retrieved passages and cite them.

Files: ``alce/{asqa,qampari}_eval_gtr_top2000.json`` under ``data_dir`` and HELMET's prompt files
``{asqa,qampari}_revised.json`` (instruction, passage and demonstration formats, demonstrations)
from the ``prompts/`` folder of HELMET's repository (``prompts_dir``; default ``data_dir/../prompts``).
Chat template, 2 shots, 300 new tokens; the first 30/75/165/345/700 passages at 8K–128K.

Scores computed here need no model: ASQA ``str_em`` (share of the question's short answers found in
the output) and QAMPARI ``rec_top5`` (answers recalled, capped at 5). HELMET's citation recall and
precision need the NLI model ``google/t5_xxl_true_nli_mixture`` and are not computed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..base import ModelContext
from ..metrics import normalize_answer
from .common import fit_context, generate, hf_shuffle, read_json

DOCS = {4096: 8, 8192: 30, 16384: 75, 32768: 165, 65536: 345, 131072: 700}
USER = "{demo_text}{instruction}\n\nQuestion: {question}\n\n{context}"
SYSTEM = "Answer:"
SHOTS, SEED = 2, 42


def remove_citations(sentence: str) -> str:
    return re.sub(r"\[\d+", "", re.sub(r" \[\d+", "", sentence)).replace(" |", "").replace("]", "")


def str_em(output: str, qa_pairs: list[dict]) -> float:
    """ASQA: the share of questions any of whose short answers occurs in the (normalised) output."""
    text = normalize_answer(output)
    return sum(any(normalize_answer(a) in text for a in qa["short_answers"]) for qa in qa_pairs) / len(qa_pairs)


def qampari_recall_top5(output: str, answers: list[list[str]]) -> float:
    """QAMPARI: comma-separated predictions matching an answer's aliases exactly, recall capped at 5."""
    preds = [normalize_answer(x.strip()) for x in output.rstrip().rstrip(".").rstrip(",").split(",")]
    preds = [p for p in preds if p]
    hits = sum(any(normalize_answer(a) in preds for a in aliases) for aliases in answers)
    return min(5, hits) / min(5, len(answers))


@dataclass(frozen=True)
class Cite:
    dataset: str  # "asqa" | "qampari"
    prompts_dir: str | None = None
    max_new_tokens: int = 300

    @property
    def primary_metric(self) -> str:
        return "str_em" if self.dataset == "asqa" else "rec_top5"

    def make_samples(self, ctx: ModelContext, data_dir: Path, length: int, n: int, seed: int) -> list[dict]:
        if length not in DOCS:
            raise ValueError(f"helmet alce_{self.dataset}: HELMET defines no passage count for length {length}; lengths: {sorted(DOCS)}")
        path = data_dir / "alce" / f"{self.dataset}_eval_gtr_top2000.json"
        rows = read_json(path)
        prompt = read_json(Path(self.prompts_dir or data_dir.parent / "prompts") / f"{self.dataset}_revised.json")
        if len(rows) < n:
            raise ValueError(f"{path} holds {len(rows)} samples, {n} asked")
        docs = lambda ds: "\n\n".join(prompt["doc_prompt"].format(**d, ID=i + 1) for i, d in enumerate(ds))  # noqa: E731
        rand = random.Random(SEED)  # HELMET draws each row's demonstrations in file order, then shuffles the rows
        shots = [rand.sample(prompt["demos"], SHOTS) for _ in rows]
        samples = []
        for i in hf_shuffle(len(rows), SEED)[:n]:
            row = rows[i]
            demo_text = "\n\n\n".join(prompt["demo_prompt"].format(**d, instruction=prompt["instruction"], context=docs(d["docs"]))
                                      for d in shots[i]) + "\n\n\n"
            fields = {"demo_text": demo_text, "instruction": prompt["instruction"], "question": row["question"],
                      "context": docs(row["docs"][: DOCS[length]])}
            fields = fit_context(ctx, fields, lambda f: (USER.format(**f), SYSTEM), length - self.max_new_tokens, chat=True)
            gold = {"qa_pairs": row["qa_pairs"]} if self.dataset == "asqa" else {"answers": row["answers"]}
            samples.append({"user": USER.format(**fields), "system": SYSTEM, **gold})
        return samples

    def evaluate(self, ctx: ModelContext, sample: dict) -> dict[str, float]:
        output, sparsity = generate(ctx, sample, self.max_new_tokens, chat=True, stop_new_line=False)
        output = remove_citations(re.sub(r"\n+", " ", output))
        if self.dataset == "asqa":
            return {"str_em": str_em(output, sample["qa_pairs"]), "sparsity": sparsity}
        return {"rec_top5": qampari_recall_top5(output, sample["answers"]), "sparsity": sparsity}
