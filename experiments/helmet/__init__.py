"""HELMET from local data: the files a user downloaded from HELMET (princeton-nlp/HELMET,
``data/``), read in their own format and scored with their own metrics where no LLM judge is needed.

    tasks:
      - name: helmet
        settings: {data_dir: /path/to/HELMET/data, categories: [recall, rag, rerank, icl, longqa, cite]}

expands to one task per dataset of the categories (one module each in this package):

========  =========================================================  ==============================
category  datasets                                                   metric
========  =========================================================  ==============================
recall    ``json_kv``, ``ruler_niah_mk_2``, ``ruler_niah_mk_3``,      SubEM (JSON KV), recall
          ``ruler_niah_mv``
rag       ``kilt_nq``, ``kilt_triviaqa``, ``kilt_popqa``,             SubEM
          ``kilt_hotpotqa``
rerank    ``msmarco_rerank``                                          NDCG@10
icl       ``icl_trec_coarse``, ``icl_trec_fine``, ``icl_banking77``,  exact match
          ``icl_clinic150``, ``icl_nlu``
longqa    ``infbench_qa``, ``infbench_choice``                        ROUGE-L F1, exact match
cite      ``alce_asqa``, ``alce_qampari``                             str_em, rec_top5 (no citation
                                                                     scores: they need an NLI model)
========  =========================================================  ==============================

Summarisation and NarrativeQA are not read: HELMET scores them with a GPT-4o judge. Samples are the
first ``samples`` of HELMET's own selection (its fixed seeds), so every method sees the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..base import ModelContext
from .cite import Cite
from .icl import DATASETS as ICL_DATASETS
from .icl import ICL
from .longqa import InfBench
from .recall_rag import RecallRag
from .rerank import Rerank

CATEGORIES = {
    "recall": ("json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv"),
    "rag": ("kilt_nq", "kilt_triviaqa", "kilt_popqa", "kilt_hotpotqa"),
    "rerank": ("msmarco_rerank",),
    "icl": tuple(f"icl_{name}" for name in ICL_DATASETS),
    "longqa": ("infbench_qa", "infbench_choice"),
    "cite": ("alce_asqa", "alce_qampari"),
}
JUDGED = {"summ": "summarisation", "narrativeqa": "NarrativeQA"}  # need an LLM judge


def expand(settings: dict) -> list[dict]:
    """``{data_dir, categories}`` → one task settings dict per dataset."""
    categories = settings.get("categories") or ["recall"]
    for category in categories:
        if category in JUDGED:
            raise ValueError(f"helmet category {category!r} is not supported: HELMET scores {JUDGED[category]} with a "
                             f"GPT-4o judge; supported: {sorted(CATEGORIES)}")
        if category not in CATEGORIES:
            raise ValueError(f"unknown helmet category {category!r}; expected one of {sorted(CATEGORIES)}")
    if "data_dir" not in settings:
        raise ValueError("helmet needs settings.data_dir: the folder holding HELMET's data")
    extra = {k: v for k, v in settings.items() if k != "categories"}
    return [{**extra, "dataset": d} for c in categories for d in CATEGORIES[c]]


def _handler(dataset: str, file: str | None, prompts_dir: str | None, max_new_tokens: int | None):
    budget = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    if dataset in CATEGORIES["recall"] + CATEGORIES["rag"]:
        return RecallRag(dataset, file, max_new_tokens)
    if file is not None:
        raise ValueError(f"helmet {dataset}: 'file' applies to the recall and rag datasets only")
    if dataset == "msmarco_rerank":
        return Rerank(**budget)
    if dataset in CATEGORIES["icl"]:
        return ICL(dataset.removeprefix("icl_"), **budget)
    if dataset in CATEGORIES["longqa"]:
        return InfBench(dataset.removeprefix("infbench_"), **budget)
    return Cite(dataset.removeprefix("alce_"), prompts_dir, **budget)


@dataclass(frozen=True)
class HelmetLocal:
    data_dir: str
    dataset: str
    max_new_tokens: int | None = None  # override HELMET's generation length
    higher_is_better: bool = True
    file: str | None = None  # recall / rag: a file relative to data_dir instead of HELMET's name for the length
    prompts_dir: str | None = None  # cite: HELMET's prompts/ folder (default data_dir/../prompts)

    def __post_init__(self):
        known = [d for ds in CATEGORIES.values() for d in ds]
        if self.dataset not in known:
            raise ValueError(f"unknown helmet dataset {self.dataset!r}; expected one of {known}")
        if self.max_new_tokens is not None and (isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int)
                                                or self.max_new_tokens < 1):
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        object.__setattr__(self, "_handler", _handler(self.dataset, self.file, self.prompts_dir, self.max_new_tokens))

    @property
    def name(self) -> str:
        return f"helmet_{self.dataset}"

    @property
    def primary_metric(self) -> str:
        return self._handler.primary_metric

    def make_samples(self, ctx: ModelContext, length: int, n: int, seed: int) -> list[dict]:
        return self._handler.make_samples(ctx, Path(self.data_dir), length, n, seed)

    def evaluate(self, ctx: ModelContext, sample: dict) -> dict[str, float]:
        return self._handler.evaluate(ctx, sample)
