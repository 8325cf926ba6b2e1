"""HELMET's synthetic recall tasks and two more RULER tasks, generated offline.

Each sample holds a ``record`` in the schema of the file HELMET reads for that task (JSON KV:
``context``/``question``/``answer``/``num_kvs``/``demos``; RULER: ``context``/``query``/``outputs``/
``type_needle_v``/``length``, VT adds ``num_v``), so :func:`export` writes files HELMET itself (and
``experiments.helmet``) can load. Prompts follow HELMET's templates for those files, with the
model's chat template when it has one; decoding is greedy (prefill sparse, decode dense).
Haystacks come from the offline corpus, keys and values from a seeded generator.

==================  ==========================================================  ====================
task                what is hidden                                              metric
==================  ==========================================================  ====================
``json_kv``         one key of a JSON object of UUID pairs                      SubEM
``ruler_mk_niah_2`` one of many "magic number for <word>" lines (all needles)   recall (string match)
``ruler_mk_niah_3`` one of many "magic uuid for <uuid>" lines (all needles)     recall
``ruler_mv_niah``   four numbers for one key, spread through natural text       recall of all four
``ruler_vt``        a 4-hop chain of variable assignments in filler text        recall of all names
``ruler_cwe``       the 10 most frequent words of a numbered word list          recall of all ten
==================  ==========================================================  ====================
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .base import ModelContext, corpus_window
from .metrics import string_match_all, substring_exact_match

NIAH_USER = ("A special magic {type_needle_v} is hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
             "What is the special magic {type_needle_v} for {query} mentioned in the provided text?")
NIAH_SYSTEM = "The special magic {type_needle_v} for {query} mentioned in the provided text is"
MV_USER = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
           "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
           "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?")
MV_SYSTEM = "The special magic {type_needle_v} for {query} mentioned in the provided text are"
VT_USER = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
           "Question: Find all variables that are assigned the value {query} in the text above.")
VT_SYSTEM = ("Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assigned the value {query}, they are:")
CWE_USER = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
            "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?")
CWE_SYSTEM = "Answer: The top 10 words that appear most often in the list are:"
JSON_KV_USER = "{context}\n\nExtract the value corresponding to the specified key in the JSON object below.\n\nKey: {question}"
JSON_KV_SYSTEM = "Corresponding value:"
VT_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "

RULER_FILES = {"ruler_mk_niah_2": "niah_multikey_2", "ruler_mk_niah_3": "niah_multikey_3", "ruler_mv_niah": "niah_multivalue",
               "ruler_vt": "vt", "ruler_cwe": "cwe"}


def _uuid(rng) -> str:
    high, low = (int(x) for x in rng.integers(0, 2**63, size=2))
    return str(uuid.UUID(int=(high << 65 | low << 1) & ((1 << 128) - 1), version=4))


def _number(rng) -> str:
    return str(int(rng.integers(1_000_000, 10_000_000)))


def _words(ctx: ModelContext) -> list[str]:
    return sorted(set(re.findall(r"\b[a-z]{4,10}\b", ctx.corpus[:2_000_000])))


def prompt_ids(ctx: ModelContext, user: str, system: str) -> torch.Tensor:
    """The prompt as HELMET builds it: user message (in the chat template if any), then the answer prefix."""
    tok = ctx.tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        return torch.tensor([tok(text + system, add_special_tokens=False).input_ids])
    return torch.tensor([tok(user + "\n" + system).input_ids])


def fit(ctx: ModelContext, build: Callable[[int], tuple[str, str]], length: int, start: int, limit: int) -> int:
    """The largest ``n ≤ limit`` for which the prompt ``build(n)`` has at most ``length`` tokens."""
    count = lambda n: prompt_ids(ctx, *build(n)).shape[1]  # noqa: E731
    lo, hi = 0, min(max(1, start), limit)
    while count(hi) <= length:
        if hi == limit:
            return limit
        lo, hi = hi, min(hi * 2, limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= length else (lo, mid)
    if lo == 0:
        raise ValueError(f"length {length} is too short for this task's prompt")
    return lo


@dataclass(frozen=True)
class _Generated:
    """Shared evaluation: greedy generation, then the task's metric against the record's answers."""

    max_new_tokens: int = 50
    primary_metric: str = "recall"
    higher_is_better: bool = True

    def make_samples(self, ctx: ModelContext, length: int, n: int, seed: int) -> list[dict]:
        rng = np.random.default_rng([seed, length, sum(map(ord, self.name))])
        samples = []
        for _ in range(n):
            record, user, system = self.build(ctx, length - self.max_new_tokens, rng)
            samples.append({"record": record, "user": user, "system": system})
        return samples

    def evaluate(self, ctx: ModelContext, sample: dict) -> dict[str, float]:
        output, sparsity = ctx.generate(prompt_ids(ctx, sample["user"], sample["system"]), self.max_new_tokens)
        return {self.primary_metric: self.score(output, sample["record"]), "sparsity": sparsity}

    def score(self, output: str, record: dict) -> float:
        return string_match_all(output, record["outputs"])


@dataclass(frozen=True)
class JsonKV(_Generated):
    max_new_tokens: int = 100
    primary_metric: str = "subem"
    name: str = "json_kv"

    def build(self, ctx, length, rng):
        pairs = [(_uuid(rng), _uuid(rng)) for _ in range(length // 20 + 16)]  # a pair takes ~50 tokens

        def prompt(n):
            context = "JSON data:\n" + json.dumps(dict(pairs[:n]), indent=1)
            return JSON_KV_USER.format(context=context, question=pairs[0][0]), JSON_KV_SYSTEM

        n = fit(ctx, prompt, length, 16, len(pairs))
        pairs = pairs[:n]
        key, value = pairs[int(rng.integers(0, n))]
        context = "JSON data:\n" + json.dumps(dict(pairs), indent=1)
        record = {"context": context, "question": key, "answer": value, "num_kvs": n, "demos": []}
        return record, JSON_KV_USER.format(context=context, question=key), JSON_KV_SYSTEM

    def score(self, output, record):
        return substring_exact_match(output, record["answer"])


@dataclass(frozen=True)
class MultiKeyNeedles(_Generated):
    """RULER niah_multikey_2 (word keys, number values) and _3 (uuid keys and values): the haystack
    is made of needles only; one key is asked."""

    uuids: bool = False
    name: str = "ruler_mk_niah_2"

    def build(self, ctx, length, rng):
        kind = "uuids" if self.uuids else "numbers"
        words = _words(ctx)
        line = "One of the special magic {kind} for {key} is: {value}."

        def needle():
            key = _uuid(rng) if self.uuids else f"{words[int(rng.integers(0, len(words)))]}-{words[int(rng.integers(0, len(words)))]}"
            return key, _uuid(rng) if self.uuids else _number(rng)

        needles = [needle() for _ in range(length // 8 + 64)]  # a needle line takes 15-40 tokens
        keys = set()
        needles = [kv for kv in needles if not (kv[0] in keys or keys.add(kv[0]))]

        def prompt(n):
            context = "\n".join(line.format(kind=kind, key=k, value=v) for k, v in needles[:n])
            return (NIAH_USER.format(type_needle_v=kind, context=context, query=needles[0][0]),
                    NIAH_SYSTEM.format(type_needle_v=kind, query=needles[0][0]))

        n = fit(ctx, prompt, length, 32, len(needles))
        key, value = needles[int(rng.integers(0, n))]
        context = "\n".join(line.format(kind=kind, key=k, value=v) for k, v in needles[:n])
        record = {"context": context, "query": key, "outputs": [value], "type_needle_v": kind, "length": length}
        return (record, NIAH_USER.format(type_needle_v=kind, context=context, query=key),
                NIAH_SYSTEM.format(type_needle_v=kind, query=key))


@dataclass(frozen=True)
class MultiValueNeedles(_Generated):
    """RULER niah_multivalue: four numbers for one word key, at random depths of natural text."""

    values: int = 4
    name: str = "ruler_mv_niah"

    def build(self, ctx, length, rng):
        words = _words(ctx)
        key = f"{words[int(rng.integers(0, len(words)))]}-{words[int(rng.integers(0, len(words)))]}"
        values = [_number(rng) for _ in range(self.values)]
        needles = [f" One of the special magic numbers for {key} is: {v}. " for v in values]
        text_ids = corpus_window(ctx, length, rng)
        depths = sorted(rng.uniform(0, 1, size=self.values))

        def context(n):
            hay = ctx.tokenizer.decode(text_ids[:n])
            cuts = [int(d * len(hay)) for d in depths]
            pieces, last = [], 0
            for cut, needle in zip(cuts, needles):
                pieces += [hay[last:cut], needle]
                last = cut
            return "".join(pieces) + hay[last:]

        def prompt(n):
            return (MV_USER.format(type_needle_v="numbers", context=context(n), query=key),
                    MV_SYSTEM.format(type_needle_v="numbers", query=key))

        n = fit(ctx, prompt, length, length // 2, len(text_ids))
        record = {"context": context(n), "query": key, "outputs": values, "type_needle_v": "numbers", "length": length}
        return record, *prompt(n)


@dataclass(frozen=True)
class VariableTracking(_Generated):
    """RULER vt: ``VAR X1 = <number>``, then ``VAR X2 = VAR X1`` … (``hops``), in filler sentences."""

    hops: int = 4
    max_new_tokens: int = 30
    name: str = "ruler_vt"

    def build(self, ctx, length, rng):
        names = []
        while len(names) < self.hops + 1:
            name = "".join(chr(int(c)) for c in rng.integers(65, 91, size=5))
            if name not in names:
                names.append(name)
        value = _number(rng)
        statements = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
        depths = sorted(rng.uniform(0, 1, size=len(statements)))

        def context(n):
            fill = [VT_NOISE] * n
            for depth, statement in zip(depths, statements):
                fill.insert(int(depth * len(fill)), statement + " ")
            return "".join(fill)

        def prompt(n):
            return (VT_USER.format(context=context(n), query=value),
                    VT_SYSTEM.format(num_v=len(names), query=value))

        n = fit(ctx, prompt, length, 8, length)
        record = {"context": context(n), "query": value, "outputs": names, "num_v": len(names), "example": "",
                  "length": length}
        return record, *prompt(n)


@dataclass(frozen=True)
class CommonWords(_Generated):
    """RULER cwe: a numbered word list where 10 words appear ``common`` times (default: 30, fewer
    below 8K tokens so that the list fits), the others ``rare`` times."""

    common: int | None = None
    rare: int = 3
    max_new_tokens: int = 120
    name: str = "ruler_cwe"

    def build(self, ctx, length, rng):
        words = [str(w) for w in rng.permutation(_words(ctx))]
        frequent, others = words[:10], words[10:]
        common = self.common if self.common is not None else max(4, min(30, length // 256))

        def listing(n):
            items = frequent * common + others[:n] * self.rare
            order = np.random.default_rng(n).permutation(len(items))
            return " ".join(f"{i + 1}. {items[j]}" for i, j in enumerate(order))

        def prompt(n):
            return CWE_USER.format(context=listing(n)), CWE_SYSTEM

        n = fit(ctx, prompt, length, 16, len(others))
        record = {"context": listing(n), "outputs": frequent, "example": "", "length": length}
        return record, *prompt(n)


@dataclass(frozen=True)
class MultiKeyUuidNeedles(MultiKeyNeedles):
    uuids: bool = True
    name: str = "ruler_mk_niah_3"


TASKS = {cls.name: cls for cls in (JsonKV, MultiKeyNeedles, MultiKeyUuidNeedles, MultiValueNeedles, VariableTracking, CommonWords)}


def export(task_name: str, samples: list[dict], length: int, data_dir: str | Path) -> Path:
    """Write samples as the file HELMET reads for the task: ``json_kv/test_k{num_kvs}_dep6.jsonl``
    (named after the first sample) or ``ruler/<task>/validation_<length>.jsonl``."""
    data_dir = Path(data_dir)
    if task_name == "json_kv":
        path = data_dir / "json_kv" / f"test_k{samples[0]['record']['num_kvs']}_dep6.jsonl"
    else:
        path = data_dir / "ruler" / RULER_FILES[task_name] / f"validation_{length}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for index, sample in enumerate(samples):
            fh.write(json.dumps({"index": index, **sample["record"]}) + "\n")
    return path
