"""Video-MME from a local copy in the official layout (CPU): synthetic mp4 files written here, a
parquet and .srt files in the official schema, frame sampling and decoding, subtitle alignment,
the official prompt and answer extraction, bad input, and an end-to-end run that resumes."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
av = pytest.importorskip("av")
pd = pytest.importorskip("pandas")

from experiments import videomme as vm  # noqa: E402
from experiments.base import ModelContext  # noqa: E402
from experiments.config import EvalConfig  # noqa: E402
from experiments.runner import RECORDS, load_records, run, summarize  # noqa: E402
from tests.vlm_models import qwen2_vl_for  # noqa: E402
from tests.vlm_processor import TinyQwen2VLProcessor  # noqa: E402

FPS = 10
VIDEOS = {"vid_short": ("short", 40), "vid_medium": ("medium", 60), "vid_long": ("long", 50)}  # frames at 10 fps


def level(i: int) -> int:
    """The grey level of frame ``i`` of a synthetic video (distinct per frame, survives H.264)."""
    return 16 + 4 * i


def write_video(path: Path, frames: int, width: int = 64, height: int = 48) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "10", "g": "12"})  # keyframe every 1.2 s
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), level(i), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


SRT = """1
00:00:00,000 --> 00:00:01,000
<font color="white" size=".72c">first line</font>

2
00:00:01,500 --> 00:00:02,500
<font color="white" size=".72c">second line</font>

3
00:00:04,000 --> 00:00:05,000
plain <i>third</i> line
"""


def questions() -> list[dict]:
    rows = []
    for v, (video, (duration, _)) in enumerate(VIDEOS.items()):
        for q in range(3):
            rows.append({"video_id": f"{v + 1:03d}", "duration": duration, "domain": ["Knowledge", "Sports Competition"][v % 2],
                         "sub_category": "Astronomy", "url": f"https://example.invalid/{video}", "videoID": video,
                         "question_id": f"{v + 1:03d}-{q + 1}", "task_type": ["Counting Problem", "OCR Problems", "Temporal Reasoning"][q],
                         "question": f"What happens in part {q + 1} of the video?",
                         "options": [f"{letter}. option {letter.lower()}{q}" for letter in vm.LETTERS], "answer": "ABCD"[(v + q) % 4]})
    return rows


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videomme")
    (root / "videomme").mkdir()
    (root / "data").mkdir()
    (root / "subtitle").mkdir()
    pd.DataFrame(questions()).to_parquet(root / "videomme" / "test-00000-of-00001.parquet")
    for video, (_, frames) in VIDEOS.items():
        write_video(root / "data" / f"{video}.mp4", frames)
    for video in ("vid_short", "vid_medium"):  # vid_long has no subtitles
        (root / "subtitle" / f"{video}.srt").write_text(SRT, encoding="utf-8")
    return root


def test_reads_the_official_parquet(root):
    rows = vm.read_questions(root)
    assert len(rows) == 9 and set(rows[0]) == set(vm.COLUMNS)
    assert rows[0]["options"] == ["A. option a0", "B. option b0", "C. option c0", "D. option d0"]
    assert [r["question_id"] for r in rows] == [q["question_id"] for q in questions()]


def test_probe_and_uniform_sampling_follow_the_official_indices(root):
    info = vm.probe(root / "data" / "vid_medium.mp4")
    assert (info.total_frames, info.fps, info.width, info.height) == (60, FPS, 64, 48)
    indices = vm.frame_indices(info, 8)
    assert indices.tolist() == np.linspace(0, 59, 8, dtype=int).tolist()  # 0, 8, 16, …, 59
    frames = vm.decode(info, indices)
    assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
    got = frames.reshape(8, -1).mean(axis=1)
    np.testing.assert_allclose(got, [level(i) for i in indices], atol=2.5)  # each the frame asked for
    far = [57, 3, 31, 3]  # more than two seconds apart: seeks to the keyframe before each, then decodes forward
    np.testing.assert_allclose(vm.decode(info, far).reshape(4, -1).mean(axis=1), [level(i) for i in far], atol=2.5)


def test_fps_sampling_is_capped_and_keeps_timestamps(root):
    info = vm.probe(root / "data" / "vid_medium.mp4")  # 6 s
    assert vm.frame_indices(info, 100, "fps", fps=2).tolist() == list(range(0, 60, 5))  # 12 frames, 0.5 s apart
    capped = vm.frame_indices(info, 4, "fps", fps=2)
    assert capped.tolist() == [0, 15, 30, 45]
    frames = vm.decode(info, capped[::-1])  # any order, repeats allowed
    np.testing.assert_allclose(frames.reshape(4, -1).mean(axis=1), [level(i) for i in capped[::-1]], atol=2.5)
    with pytest.raises(ValueError, match="sampling"):
        vm.frame_indices(info, 4, "keyframes")


def test_subtitles_are_the_lines_shown_at_the_sampled_frames(root):
    cues = vm.read_subtitles(root / "subtitle" / "vid_short.srt")
    assert [(c.start, c.end, c.text) for c in cues] == [(0.0, 1.0, "first line"), (1.5, 2.5, "second line"),
                                                        (4.0, 5.0, "plain third line")]
    at = lambda frames: vm.subtitles_at(cues, frames, FPS)  # noqa: E731
    assert at([0, 20, 45]) == ["first line", "second line", "plain third line"]
    assert at([45, 5, 2]) == ["first line", "plain third line"]  # time order, each once
    assert at([10, 12, 14, 30]) == []  # 1.0 s is the first cue's end (exclusive); 1.2 s, 1.4 s, 3 s show none
    assert at([15, 24]) == ["second line"]  # start inclusive, 2.4 s inside
    assert at([25]) == []


def test_official_prompt_with_and_without_subtitles():
    options = ["A. red", "B. green", "C. blue", "D. black"]
    plain = vm.prompt("Which colour?", options, None)
    assert plain == ("Select the best answer to the following multiple-choice question based on the video. Respond with "
                     "only the letter (A, B, C, or D) of the correct option.\nWhich colour?\nA. red\nB. green\nC. blue\n"
                     "D. black\nThe best answer is:")
    with_subs = vm.prompt("Which colour?", options, ["hello", "world"])
    assert with_subs.startswith("This video's subtitles are listed below: \nhello\nworld\nSelect the best answer to the "
                                "following multiple-choice question based on the video and the subtitles.")
    assert with_subs.endswith("\nWhich colour?\nA. red\nB. green\nC. blue\nD. black\nThe best answer is:")
    assert "\nNo subtitles available\n" in vm.prompt("Which colour?", options, [])


@pytest.mark.parametrize("response, letter", [
    ("C", "C"),
    ("B.", "B"),
    ("  D. black", "D"),
    ("(A)", "A"),
    ("The best answer is: C", "C"),
    ("The answer is B. green", "B"),
    ("The correct answer is (D).", "D"),
    ("Answer: A", "A"),
    ("I think it is option C because the sky is clear", "C"),
    ("c", ""),  # lower case is not a letter answer
    ("none of the options", ""),
    ("The video does not show enough to decide between the given options at all.", ""),
    ("", ""),
    ("Best answer: C", "B"),  # the official rule's missing comma: "Best answer:" is not stripped
    ("The best option is A", "A"),
])
def test_answer_extraction_follows_the_official_rule(response, letter):
    assert vm.extract_answer(response) == letter


def test_bad_input_names_the_file(root, tmp_path):
    info = vm.probe(root / "data" / "vid_short.mp4")
    with pytest.raises(FileNotFoundError, match=r"vid_missing\.mp4 is missing"):
        vm.probe(root / "data" / "vid_missing.mp4")
    broken = tmp_path / "data" / "broken.mp4"
    broken.parent.mkdir()
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    with pytest.raises(ValueError, match=r"cannot read the video .*broken\.mp4"):
        vm.probe(broken)
    with pytest.raises(FileNotFoundError, match=r"videomme/test-\*\.parquet"):
        vm.read_questions(tmp_path)
    (tmp_path / "videomme").mkdir()
    bad = tmp_path / "videomme" / "test-00000-of-00001.parquet"
    pd.DataFrame(questions()).drop(columns=["task_type", "options"]).to_parquet(bad)
    with pytest.raises(ValueError, match=r"test-00000-of-00001\.parquet lacks the Video-MME column\(s\) \['task_type', 'options'\]"):
        vm.read_questions(tmp_path)
    rows = questions()
    rows[4]["answer"] = "E"
    pd.DataFrame(rows).to_parquet(bad)
    with pytest.raises(ValueError, match=r"question '002-2' has answer 'E'"):
        vm.read_questions(tmp_path)
    bad.write_bytes(b"not a parquet file")
    with pytest.raises(ValueError, match=r"cannot read the Video-MME parquet .*test-00000-of-00001\.parquet"):
        vm.read_questions(tmp_path)
    assert info.total_frames == 40
    (tmp_path / "subtitle").mkdir()
    (tmp_path / "subtitle" / "x.srt").write_bytes(b"\xff\xfe\xfa broken")
    with pytest.raises(ValueError, match=r"cannot read the subtitle file .*x\.srt"):
        vm.read_subtitles(tmp_path / "subtitle" / "x.srt")


def test_video_path_accepts_the_other_extensions_lmms_eval_accepts(tmp_path):
    (tmp_path / "data").mkdir()
    assert vm.video_path(tmp_path, "abc") == tmp_path / "data" / "abc.mp4"  # missing: named as .mp4
    (tmp_path / "data" / "abc.mkv").write_bytes(b"")
    assert vm.video_path(tmp_path, "abc") == tmp_path / "data" / "abc.mkv"
    (tmp_path / "data" / "abc.mp4").write_bytes(b"")
    assert vm.video_path(tmp_path, "abc") == tmp_path / "data" / "abc.mp4"


def test_task_settings_are_validated():
    with pytest.raises(ValueError, match="root"):
        vm.VideoMME()
    with pytest.raises(ValueError, match="fps > 0"):
        vm.VideoMME(root="x", sampling="fps")
    with pytest.raises(ValueError, match="durations"):
        vm.VideoMME(root="x", durations=["tiny"])
    base = {"run_name": "v", "methods": ["full"], "tasks": [{"name": "videomme", "settings": {"root": "x"}}]}
    assert EvalConfig.from_dict({**base, "lengths": [8, 64]}).lengths == (8, 64)  # frame counts
    with pytest.raises(ValueError, match="frame counts >= 1"):
        EvalConfig.from_dict({**base, "lengths": [0]})
    with pytest.raises(ValueError, match="token counts >= 64"):  # mixed with a token task: token counts
        EvalConfig.from_dict({**base, "tasks": [*base["tasks"], "copy"], "lengths": [8]})
    cfg = EvalConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "videomme_local.yaml")
    assert [t.name for t in cfg.tasks] == ["videomme"] and cfg.lengths == (64,)


def _config(root: Path, out: Path) -> EvalConfig:
    return EvalConfig.from_dict({
        "run_name": "videomme_tiny", "output_dir": str(out), "samples": 4, "seed": 0, "lengths": [4, 8],
        "methods": ["full", {"name": "rrattention", "label": "rr", "settings": {"tau": 0.5, "stride": 4, "block_size": 32, "min_sparse_len": 0}}],
        "tasks": [{"name": "videomme", "settings": {"root": str(root), "subtitles": True, "max_new_tokens": 3}}],
    })


def test_end_to_end_run_resumes_and_reports(root, tmp_path):
    processor = TinyQwen2VLProcessor()
    model = qwen2_vl_for(processor, "sdpa")  # the runner switches it per method
    context = ModelContext(model, processor.tokenizer, model.device, lambda: "", processor=processor)
    cfg = _config(root, tmp_path / "runs")
    records = run(cfg, progress=False, context=context)
    assert len(records) == 2 * 2 * 4  # methods × frame counts × questions
    by_key = {(r["method"], r["length"], r["sample"]): r for r in records}
    for r in records:
        assert r["visual_tokens"] > 0 and r["text_tokens"] > 0 and r["prefill_tokens"] == r["visual_tokens"] + r["text_tokens"]
        assert r["prediction"] in ("", "A", "B", "C", "D") and r["accuracy"] in (0.0, 1.0)
        assert r["frames_sampled"] == r["length"]
    # 8 frames: twice the temporal patches of 4, so twice the visual tokens
    assert by_key[("full", 8, 0)]["visual_tokens"] == 2 * by_key[("full", 4, 0)]["visual_tokens"]
    assert by_key[("rr", 8, 0)]["sparsity"] > 0 and by_key[("full", 8, 0)]["sparsity"] == 0
    assert by_key[("rr", 8, 0)].get("dense_calls") == 0.0  # the language model's prefill ran sparse
    # subtitles on: the first videos have some lines at the sampled frames, the one without a file has none
    assert {r["videoID"] for r in records if r["subtitle_lines"] > 0} <= {"vid_short", "vid_medium"}
    call = processor.calls[0]
    assert call["metadata"][0]["frames_indices"] == np.linspace(0, call["metadata"][0]["total_num_frames"] - 1, 4,
                                                                dtype=int).tolist()
    # the first four questions are whole videos (three questions each, then one more)
    assert len({r["videoID"] for r in records if r["sample"] < 3}) == 1

    summary = summarize(cfg, records)
    assert set(summary.method) == {"full", "rr"} and (summary[summary.method == "full"].pct_of_full.dropna() == 100).all()
    report = (cfg.run_dir / "videomme.md").read_text()
    assert "## Overall and by duration" in report and "## By domain" in report and "## By task type" in report
    assert (cfg.run_dir / "videomme.png").exists()

    # kill in the middle of writing: ten whole records and a partial one
    path = cfg.run_dir / RECORDS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:10]) + lines[10][: len(lines[10]) // 2])
    calls_before = len(processor.calls)
    resumed = run(cfg, progress=False, context=context)
    assert len(resumed) == 16 and len(processor.calls) - calls_before <= 6
    for r in resumed:  # recomputed records equal the first run's (greedy, deterministic)
        first = by_key[(r["method"], r["length"], r["sample"])]
        assert (r["response"], r["visual_tokens"], r["sparsity"]) == (first["response"], first["visual_tokens"], first["sparsity"])
    again = run(cfg, progress=False, context=context)
    assert len(again) == 16 and [json.loads(x) for x in path.read_text().splitlines()] == load_records(path)
