"""HELMET's rerank, ICL, long-QA and citation categories read from small files in HELMET's formats,
with HELMET's prompts and metrics; generation is replaced by fixed outputs."""

import json
import math

import pytest

pytest.importorskip("transformers")
pytest.importorskip("rouge_score")

from experiments import TASKS  # noqa: E402
from experiments.helmet import CATEGORIES, expand  # noqa: E402
from experiments.helmet.cite import qampari_recall_top5, remove_citations, str_em  # noqa: E402
from experiments.helmet.common import calculate_metrics, parse_output  # noqa: E402
from experiments.helmet.icl import balance_labels  # noqa: E402
from experiments.helmet.rerank import ndcg_at, parse_rankings  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hum".split()


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _text(i, n=12):
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(n))


@pytest.fixture
def helmet_data(tmp_path):
    data = tmp_path / "HELMET" / "data"
    ctxs = lambda q: [{"id": str(10 + d), "title": f"T{d}", "text": _text(q + d), "label": [0, 3, 1, 0][d]} for d in range(4)]  # noqa: E731
    _write_jsonl(data / "msmarco" / "test_reranking_data_k50_dep3.jsonl",
                 [{"qid": f"q{q}", "query": f"query {q}", "ctxs": ctxs(q)} for q in range(3)])
    _write_jsonl(data / "msmarco" / "test_reranking_data_k10_dep3.jsonl",
                 [{"qid": f"d{q}", "query": f"demo {q}", "ctxs": ctxs(q)} for q in range(4)])
    for folder, label in (("trec", "coarse_label"), ("banking77", "label")):
        rows = lambda n, off: [{"text": _text(i + off, 5), label: i % 6, "fine_label": i % 6} for i in range(n)]  # noqa: E731
        _write_jsonl(data / "icl" / folder / "train.jsonl", rows(30, 0))
        _write_jsonl(data / "icl" / folder / "test.jsonl", rows(8, 100))
    book = " ".join(_text(i) for i in range(2000))
    _write_jsonl(data / "infbench" / "longbook_qa_eng.jsonl",
                 [{"id": i, "context": book if i == 0 else _text(i), "input": f"who is {i}?", "answer": [f"wizard {i}"], "options": []}
                  for i in range(4)])
    _write_jsonl(data / "infbench" / "longbook_choice_eng.jsonl",
                 [{"id": i, "context": _text(i), "input": f"which {i}?", "answer": [f"option {i % 4}"],
                   "options": [f"option {k}" for k in range(4)]} for i in range(4)])
    docs = [{"title": f"T{d}", "text": _text(d)} for d in range(40)]
    (data / "alce").mkdir(parents=True)
    (data / "alce" / "asqa_eval_gtr_top2000.json").write_text(json.dumps(
        [{"question": f"q{i}?", "qa_pairs": [{"short_answers": ["fox", "vulpes"]}, {"short_answers": ["dog"]}], "docs": docs}
         for i in range(3)]))
    (data / "alce" / "qampari_eval_gtr_top2000.json").write_text(json.dumps(
        [{"question": f"q{i}?", "answers": [["Fox", "vulpes"], ["dog"], ["wizard"]], "docs": docs} for i in range(3)]))
    prompts = tmp_path / "HELMET" / "prompts"
    prompts.mkdir()
    for name in ("asqa", "qampari"):
        (prompts / f"{name}_revised.json").write_text(json.dumps({
            "instruction": f"Instruction: answer {name} and cite.", "doc_prompt": "Document [{ID}](Title: {title}): {text}",
            "demo_prompt": "{instruction}\n\nQuestion: {question}\n\n{context}\n\nAnswer: {answer}",
            "demos": [{"question": f"demo {k}?", "answer": f"demo answer {k} [1].", "docs": docs[:2]} for k in range(4)]}))
    return data


def _tasks(data, *categories):
    return {s["dataset"]: TASKS["helmet"](**s) for s in expand({"data_dir": str(data), "categories": list(categories)})}


def _answering(context, text):
    original = context.generate
    context.generate = lambda ids, max_new_tokens: (text, 0.5)
    return original


def test_categories_expand():
    assert set(CATEGORIES) == {"recall", "rag", "rerank", "icl", "longqa", "cite"}
    assert [s["dataset"] for s in expand({"data_dir": "d", "categories": ["icl"]})] == [
        "icl_trec_coarse", "icl_trec_fine", "icl_banking77", "icl_clinic150", "icl_nlu"]
    with pytest.raises(ValueError, match="unknown helmet dataset 'icl_imdb'"):
        TASKS["helmet"](data_dir="d", dataset="icl_imdb")
    with pytest.raises(ValueError, match="'file' applies to the recall and rag datasets only"):
        TASKS["helmet"](data_dir="d", dataset="alce_asqa", file="x.json")
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        TASKS["helmet"](data_dir="d", dataset="msmarco_rerank", max_new_tokens=0)


def test_helmet_metric_helpers():
    assert parse_output("Answer: Paris\nmore") == "Paris" and parse_output("Paris\nmore") == "Paris"
    assert parse_output("label: 12", "label:") == "12"
    metrics = calculate_metrics("the wizard of oz", ["Wizard of Oz", "oz"])
    assert metrics["exact_match"] == 1.0 and metrics["substring_exact_match"] == 1.0  # articles are dropped for EM ...
    assert metrics["rougeL_f1"] == pytest.approx(2 * 0.75 / 1.75)  # ... not for ROUGE: LCS 3 of 4 predicted tokens
    partial = calculate_metrics("wizard", "wizard of oz")  # ROUGE-L: LCS 1 of 1 predicted, 1 of 3 (stemmed) reference tokens
    assert partial["rougeL_f1"] == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3)) and partial["exact_match"] == 0.0
    assert parse_rankings("Ranking: [2] > [3] > [1]\nignored 9 > 8") == {"2": 3, "3": 2, "1": 1}
    assert parse_rankings("ID4 > ID4 > ID1 and 7") == {"4": 3, "1": 1}  # a repeated id keeps its first place
    qrels = {"1": 0, "2": 3, "3": 1}
    assert ndcg_at({"2": 3, "3": 2, "1": 1}, qrels) == pytest.approx(1.0)
    worst = (1 / math.log2(3) + 3 / math.log2(4)) / (3 + 1 / math.log2(3))
    assert ndcg_at({"1": 3, "3": 2, "2": 1}, qrels) == pytest.approx(worst)
    assert ndcg_at({"2": 1}, qrels, 1) == pytest.approx(1.0) and ndcg_at({}, qrels) == 0.0
    rows = [{"label": i % 4, "i": i} for i in range(21)]
    picked = balance_labels(rows, "label", 10, seed=3)
    counts = [sum(r["label"] == k for r in picked) for k in range(4)]
    assert len(picked) == 10 and max(counts) - min(counts) <= 1 and picked == balance_labels(rows, "label", 10, seed=3)
    assert remove_citations("Paris [1][2] is big [3].") == "Paris is big."
    pairs = [{"short_answers": ["fox", "vulpes"]}, {"short_answers": ["dog"]}]
    assert str_em("A Fox ran.", pairs) == 0.5 and str_em("the fox and the dog", pairs) == 1.0
    assert qampari_recall_top5("Vulpes, wizard, cat.", [["fox", "vulpes"], ["dog"], ["wizard"]]) == pytest.approx(2 / 3)
    assert qampari_recall_top5("a, b, c, d, e, f", [[x] for x in "abcdefgh"]) == 1.0  # recall capped at 5 answers


def test_rerank(helmet_data, context):
    task = _tasks(helmet_data, "rerank")["msmarco_rerank"]
    samples = task.make_samples(context, 8192, 2, seed=0)
    assert samples == task.make_samples(context, 8192, 2, seed=5)  # HELMET's fixed seeds choose queries and demos
    user = samples[0]["user"]
    assert user.startswith("You are provided with a list of documents") and "[ID: 11] Document (Title: T1):" in user
    assert user.count("Ranking: 11 > 12 > 10 > 13") == 2  # two demonstrations with their gold rankings
    assert samples[0]["qrels"] == {"10": 0, "11": 3, "12": 1, "13": 0}
    original = _answering(context, " [11] > [12] > [13]\n[10]")  # generation stops at the newline
    try:
        metrics = task.evaluate(context, samples[0])
        assert metrics["ndcg@10"] == pytest.approx(1.0) and metrics["num_preds"] == 3 and metrics["sparsity"] == 0.5
        context.generate = lambda ids, max_new_tokens: (" 10 > 13 > 12 > 11", 0.5)
        assert task.evaluate(context, samples[0])["ndcg@10"] < 0.6
    finally:
        context.generate = original


def test_icl(helmet_data, context):
    task = _tasks(helmet_data, "icl")["icl_trec_coarse"]
    samples = task.make_samples(context, 8192, 3, seed=0)
    user = samples[0]["user"]
    assert user.startswith('Use the provided mapping from the text to label to assign a label to the text. Only output "label: {label}"')
    assert len(user.encode()) <= 8192 - 20  # 400 demonstrations do not fit: the context is cut at its end
    assert user.endswith("\n\n" + _text(100, 5)) and user.count("\nlabel: ") > 10
    mapping_label = samples[0]["answer"]
    assert mapping_label.isdigit() and 0 <= int(mapping_label) < 6
    original = _answering(context, f" {mapping_label}\nlabel: 99")
    try:
        assert task.evaluate(context, samples[0])["exact_match"] == 1.0
        context.generate = lambda ids, max_new_tokens: (f" {int(mapping_label) + 1}", 0.5)
        assert task.evaluate(context, samples[0])["exact_match"] == 0.0
    finally:
        context.generate = original
    with pytest.raises(ValueError, match="no shot count for length 1000"):
        task.make_samples(context, 1000, 1, seed=0)
    with pytest.raises(FileNotFoundError, match="no HELMET file"):
        _tasks(helmet_data, "icl")["icl_nlu"].make_samples(context, 8192, 1, seed=0)


def test_longqa(helmet_data, context):
    tasks = _tasks(helmet_data, "longqa")
    qa = tasks["infbench_qa"].make_samples(context, 4096, 4, seed=0)
    book = next(s for s in qa if s["answers"] == ["wizard 0"])
    assert "[the rest of the text is omitted]" in book["user"] and len(book["user"].encode()) <= 4096 - 210
    assert book["user"].startswith("You are given a story and a question.") and "For example:\n\n[story text]\nQuestion: who is" in book["user"]
    assert all("[the rest" not in s["user"] for s in qa if s is not book)
    original = _answering(context, "Wizard 0.")
    try:
        assert tasks["infbench_qa"].evaluate(context, book)["rougeL_f1"] == pytest.approx(1.0)
        choice = tasks["infbench_choice"].make_samples(context, 4096, 4, seed=0)
        sample = next(s for s in choice if s["answers"][1] == "C. option 2")
        assert "Options:\nA. option 0\nB. option 1\nC. option 2\nD. option 3" in sample["user"]
        for output, want in (("C", 1.0), ("Answer: C", 1.0), ("I pick c. option 2!", 1.0), ("B", 0.0)):
            context.generate = lambda ids, max_new_tokens, o=output: (o, 0.5)
            assert tasks["infbench_choice"].evaluate(context, sample)["exact_match"] == want, output
    finally:
        context.generate = original


def test_cite(helmet_data, context):
    tasks = _tasks(helmet_data, "cite")
    asqa = tasks["alce_asqa"].make_samples(context, 8192, 2, seed=0)
    user = asqa[0]["user"]
    assert user.count("Document [30](Title: T29)") == 1 and "Document [31]" not in user  # 30 passages at 8K
    assert user.count("Answer: demo answer") == 2 and "Instruction: answer asqa and cite.\n\nQuestion: q" in user
    original = _answering(context, "The fox [1] met\n\nthe dog [2].")
    try:
        assert tasks["alce_asqa"].evaluate(context, asqa[0]) == {"str_em": 1.0, "sparsity": 0.5}
        qampari = tasks["alce_qampari"].make_samples(context, 8192, 1, seed=0)
        context.generate = lambda ids, max_new_tokens: ("fox [1], wizard [3], cat [2].", 0.5)
        assert tasks["alce_qampari"].evaluate(context, qampari[0])["rec_top5"] == pytest.approx(2 / 3)
    finally:
        context.generate = original
    with pytest.raises(FileNotFoundError, match="asqa_revised.json"):
        TASKS["helmet"](data_dir=str(helmet_data), dataset="alce_asqa", prompts_dir="/nonexistent").make_samples(context, 8192, 1, 0)
