"""HELMET long-document QA: InfiniteBench ``longbook_qa_eng`` (ROUGE-L F1) and
``longbook_choice_eng`` (exact match of the option).

HELMET loads ``xinrongzhang2022/infinitebench`` from the HuggingFace Hub; offline, its two files
are read from ``data_dir/infbench/longbook_{qa,choice}_eng.jsonl`` (fields ``id``, ``context``,
``input``, ``answer``, ``options``). Chat template, 2 shots (other books' questions with the story
elided), 10 new tokens. The book keeps its beginning: it is cut to fit ``length - 200 - 10`` tokens
plus HELMET's "[the rest of the text is omitted]" marker, counted with the evaluated model's
tokenizer (HELMET counts with Llama-2's). NarrativeQA is not read: HELMET scores it with a GPT-4o judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..base import ModelContext
from .common import (calculate_metrics, default_post_process, fit_context, generate, hf_shuffle, parse_output, prompt_ids,
                     read_jsonl)

QA_USER = ("You are given a story and a question. Answer the question as concisely as you can, using a single phrase if "
           "possible.\n\n{demo}{context}\n\nQuestion: {question}")
CHOICE_USER = ("You are given a story and a question with multiple choices. Choose the best answer from the options provided. "
               "Only one of the following options is correct, output the answer using one single letter (A, B, C, or D). "
               "Don't say anything else.\n\n{demo}{context}\n\nQuestion: {question}\nOptions:\n{options}")
SYSTEM = "Answer:"
POSTFIX = " ... [the rest of the text is omitted]"
SHOTS, SEED, RESERVED = 2, 42, 200  # HELMET leaves 200 tokens of the window for the instructions


def _options(row: dict) -> str:
    return "A. {}\nB. {}\nC. {}\nD. {}".format(*row["options"])


def _answers(row: dict, choice: bool) -> list[str]:
    if not choice:
        return list(row["answer"])
    letter = chr(ord("A") + row["options"].index(row["answer"][0]))
    return [letter, f"{letter}. {row['answer'][0]}"]


@dataclass(frozen=True)
class InfBench:
    dataset: str  # "qa" | "choice"
    max_new_tokens: int = 10

    @property
    def primary_metric(self) -> str:
        return "exact_match" if self.dataset == "choice" else "rougeL_f1"

    def path(self, data_dir: Path) -> Path:
        return data_dir / "infbench" / f"longbook_{self.dataset}_eng.jsonl"

    def _render(self, fields: dict) -> tuple[str, str]:
        template = CHOICE_USER if self.dataset == "choice" else QA_USER
        return template.format(**fields), SYSTEM

    def make_samples(self, ctx: ModelContext, data_dir: Path, length: int, n: int, seed: int) -> list[dict]:
        path = self.path(data_dir)
        rows = read_jsonl(path)
        choice = self.dataset == "choice"
        if len(rows) < n:
            raise ValueError(f"{path} holds {len(rows)} samples, {n} asked")
        demo_order = [rows[i] for i in hf_shuffle(len(rows), SEED)]
        samples = []
        for row in [rows[i] for i in hf_shuffle(len(rows), SEED)][:n]:
            shots = [d for d in demo_order if d["id"] != row["id"]][:SHOTS]
            demo = "For example:\n\n" + "\n\n".join(
                f"[story text]\nQuestion: {d['input']}\n" + (f"Options:\n{_options(d)}\n" if choice else "")
                + f"Answer: {_answers(d, choice)[0]}" for d in shots) + "\n\nNow, read the following story:\n\n"
            fields = {"demo": demo, "context": row["context"], "question": row["input"]}
            if choice:
                fields["options"] = _options(row)
            budget = length - RESERVED - self.max_new_tokens
            fields["context"] = fields["context"][: budget * 16]  # far more characters than tokens: search less
            cut = len(fields["context"]) < len(row["context"])
            if cut or prompt_ids(ctx, *self._render(fields), chat=True).shape[1] > budget:
                with_postfix = lambda f: self._render({**f, "context": f["context"] + POSTFIX})  # noqa: E731
                fields = fit_context(ctx, fields, with_postfix, budget, chat=True)
                fields["context"] += POSTFIX
            user, system = self._render(fields)
            samples.append({"user": user, "system": system, "answers": _answers(row, choice)})
        return samples

    def evaluate(self, ctx: ModelContext, sample: dict) -> dict[str, float]:
        output, sparsity = generate(ctx, sample, self.max_new_tokens, chat=True, stop_new_line=False)
        answers = sample["answers"]
        if self.dataset == "qa":
            return {**default_post_process(output, answers), "sparsity": sparsity}
        # HELMET's choice_post_process: EM of the raw or parsed output, or the "L. option" string inside it
        exact = calculate_metrics(output, answers)["exact_match"]
        parsed = parse_output(output, SYSTEM)
        if parsed is not None:
            exact = max(exact, calculate_metrics(parsed, answers)["exact_match"])
        if answers[1].lower() in output.lower():
            exact = 1.0
        return {"exact_match": exact, "sparsity": sparsity}
