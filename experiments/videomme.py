"""Video-MME (Fu et al., 2024) from a local copy in the official layout, with the model's own processor.

    <root>/videomme/test-*.parquet     one row per question (``COLUMNS``)
    <root>/data/<videoID>.mp4          the videos
    <root>/subtitle/<videoID>.srt      the subtitles (a video without a file has none)

A sample is one question; its ``length`` is the number of frames: ``sampling="uniform"`` takes
that many frames at ``np.linspace(0, total_frames - 1, n)`` (the official evaluation's indices),
``sampling="fps"`` takes ``fps`` frames a second, at most that many. Frames are decoded with PyAV
(it bundles FFmpeg: ``pip install av`` decodes H.264 mp4 on any machine; torchcodec needs the
system's FFmpeg libraries and one torch build). The model's processor resizes them and lays out
the visual tokens; the prompt is the official one, without or with subtitles (``subtitles=True``:
the subtitle lines shown at the sampled frames, as the official evaluation selects them), and the
answer is read from the output with the official letter-extraction rule. Accuracy is reported
overall and by duration, domain and task type (``report``), and as % of full attention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import ModelContext

COLUMNS = ("video_id", "duration", "domain", "sub_category", "url", "videoID", "question_id", "task_type", "question",
           "options", "answer")
DURATIONS = ("short", "medium", "long")
LETTERS = ("A", "B", "C", "D")

PROMPT_VIDEO = ("Select the best answer to the following multiple-choice question based on the video. "
                "Respond with only the letter (A, B, C, or D) of the correct option.")
PROMPT_SUBTITLES = ("Select the best answer to the following multiple-choice question based on the video and the "
                    "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
SUBTITLES_HEADER = "This video's subtitles are listed below: \n"
NO_SUBTITLES = "No subtitles available"
ANSWER_CUE = "The best answer is:"

# The official rule strips these strings before looking for a letter. Its list misses two commas,
# so two pairs act as one string each ("Best answer:" alone is not stripped, and its "B" then
# counts as the answer); kept as it acts, so scores compare with published ones.
ANSWER_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                   "The best option isThe correct option is", "Best answer:Best option:")
_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')
_TAG = re.compile(r"<[^>]+>")
_SRT_TIME = re.compile(r"(\d+):(\d+):(\d+)[,.](\d+)")


# ---------------------------------------------------------------------------------------------- questions
def read_questions(root: str | Path) -> list[dict]:
    """Every question of ``<root>/videomme/test-*.parquet``, in file order, options as a list of 4 strings."""
    import pandas as pd

    folder = Path(root) / "videomme"
    files = sorted(folder.glob("test-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Video-MME question file {folder}/test-*.parquet (expected the official layout)")
    questions = []
    for path in files:
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise ValueError(f"cannot read the Video-MME parquet {path}: {err}") from None
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path} lacks the Video-MME column(s) {missing}; expected {list(COLUMNS)}, "
                             f"found {list(frame.columns)}")
        for row in frame[list(COLUMNS)].to_dict("records"):
            options = [str(o) for o in row["options"]]
            where = f"{path}: question {row['question_id']!r}"
            if len(options) != 4:
                raise ValueError(f"{where} has {len(options)} options, expected 4 ('A. …' to 'D. …')")
            if row["answer"] not in LETTERS:
                raise ValueError(f"{where} has answer {row['answer']!r}, expected one of {list(LETTERS)}")
            if row["duration"] not in DURATIONS:
                raise ValueError(f"{where} has duration {row['duration']!r}, expected one of {list(DURATIONS)}")
            questions.append({**{c: str(row[c]) for c in COLUMNS if c != "options"}, "options": options})
    return questions


def video_path(root: str | Path, video: str) -> Path:
    """``data/<videoID>.mp4``; ``.MP4`` or ``.mkv`` where a download left that instead (as lmms-eval
    accepts). A missing file is reported by :func:`probe`, under the ``.mp4`` name."""
    mp4, *others = (Path(root) / "data" / f"{video}{ext}" for ext in (".mp4", ".MP4", ".mkv"))
    return mp4 if mp4.is_file() else next((p for p in others if p.is_file()), mp4)


def subtitle_path(root: str | Path, video: str) -> Path:
    return Path(root) / "subtitle" / f"{video}.srt"


# ---------------------------------------------------------------------------------------------- frames
@dataclass(frozen=True)
class VideoInfo:
    path: str
    total_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps


def probe(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and size of the first video stream; the error names the file."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Video-MME video {path} is missing")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            total = stream.frames
            if not total and stream.duration is not None and fps:  # containers that do not store the count
                total = int(round(float(stream.duration * stream.time_base) * fps))
            if not total or fps <= 0:
                raise ValueError(f"frame count {total} / rate {fps} not readable")
            return VideoInfo(str(path), int(total), fps, stream.codec_context.width, stream.codec_context.height)
    except (av.error.FFmpegError, ValueError) as err:
        raise ValueError(f"cannot read the video {path}: {err}") from None


def frame_indices(info: VideoInfo, n: int, sampling: str = "uniform", fps: float | None = None) -> np.ndarray:
    """Frame indices to decode: ``uniform`` → ``n`` at ``linspace(0, total - 1, n)`` (the official
    evaluation's); ``fps`` → ``fps`` frames a second, evenly spaced, at most ``n`` (at least one)."""
    if n < 1:
        raise ValueError(f"frames must be >= 1, got {n}")
    if sampling == "uniform":
        return np.linspace(0, info.total_frames - 1, n, dtype=int)
    if sampling == "fps":
        count = int(min(n, max(1, info.duration * fps)))
        return np.arange(0, info.total_frames, info.total_frames / count)[:count].astype(int)
    raise ValueError(f"sampling must be 'uniform' or 'fps', got {sampling!r}")


def decode(info: VideoInfo, indices: Sequence[int]) -> np.ndarray:
    """uint8 ``[len(indices), H, W, 3]`` RGB frames at ``indices`` (repeats allowed). Seeks to the
    keyframe before a target that is more than two seconds ahead, then decodes forward."""
    import av

    wanted = sorted(set(int(i) for i in indices))
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(info.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
            decoder, position, previous = None, None, None  # position: index of the last decoded frame
            for target in wanted:
                if decoder is None or position is None or target > position + 2 * info.fps:
                    container.seek(int(target / info.fps / stream.time_base) + (stream.start_time or 0),
                                   stream=stream, backward=True, any_frame=False)
                    decoder, position = container.decode(stream), None
                chosen = None
                for frame in decoder:
                    previous, position = frame, int(round(((frame.time or 0.0) - start) * info.fps))
                    if position >= target:
                        chosen = frame
                        break
                if chosen is None:  # the stream ended first (a frame count rounded up): its last frame
                    if previous is None:
                        raise ValueError(f"no frame decoded at or after frame {target}")
                    chosen, decoder = previous, None
                frames[target] = chosen.to_ndarray(format="rgb24")
    except av.error.FFmpegError as err:
        raise ValueError(f"cannot decode the video {info.path}: {err}") from None
    return np.stack([frames[int(i)] for i in indices])


# ---------------------------------------------------------------------------------------------- subtitles
@dataclass(frozen=True)
class Subtitle:
    start: float  # seconds
    end: float
    text: str


def read_subtitles(path: str | Path) -> list[Subtitle]:
    """The cues of an ``.srt`` file (index line, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, text lines).
    The text is the official files' ``<font …>`` content where there is one, else the tag-free lines."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read the subtitle file {path}: {err}") from None
    cues = []
    for block in re.split(r"\r?\n\s*\r?\n", text.strip()):
        lines = block.strip().splitlines()
        timing = next((i for i, line in enumerate(lines) if "-->" in line), None)
        if timing is None:
            continue
        times = _SRT_TIME.findall(lines[timing])
        if len(times) != 2:
            raise ValueError(f"{path}: unreadable subtitle timing {lines[timing]!r}")
        start, end = (int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 10 ** len(ms) for h, m, s, ms in times)
        body = " ".join(lines[timing + 1:])
        font = _FONT.findall(body)
        cue = font[0] if font else _TAG.sub("", body).strip()
        if cue:
            cues.append(Subtitle(start, end, cue))
    return cues


def subtitles_at(cues: Sequence[Subtitle], indices: Sequence[int], fps: float) -> list[str]:
    """The cues shown at the sampled frames, in time order, each once: cue ``c`` is shown at frame
    ``i`` when ``int(c.start·fps) <= i < int(c.end·fps)`` (the official evaluation's rule)."""
    frames = np.asarray(indices)
    return [c.text for c in cues if ((frames >= int(c.start * fps)) & (frames < int(c.end * fps))).any()]


# ---------------------------------------------------------------------------------------------- prompt, answer
def prompt(question: str, options: Sequence[str], subtitles: Sequence[str] | None) -> str:
    """The official prompt: ``subtitles=None`` → frames only; a list (maybe empty) → with subtitles."""
    body = question + "\n" + "\n".join(options) + "\n" + ANSWER_CUE
    if subtitles is None:
        return PROMPT_VIDEO + "\n" + body
    return SUBTITLES_HEADER + ("\n".join(subtitles) or NO_SUBTITLES) + "\n" + PROMPT_SUBTITLES + "\n" + body


def extract_answer(response: str) -> str:
    """The official letter extraction: strip the answer prefixes, then the first capital A–D, or ''
    when there is none (the official rule's "more than ten words and no letter" gives '' too)."""
    s = response.strip()
    for prefix in ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    match = re.search(r"[ABCD]", s)
    return match[0] if match else ""


# ---------------------------------------------------------------------------------------------- the task
@dataclass(frozen=True)
class VideoMME:
    """Video-MME under the method being evaluated; ``length`` is the number of frames (see the module)."""

    root: str = ""
    subtitles: bool = False
    sampling: str = "uniform"
    fps: float | None = None
    durations: tuple[str, ...] = DURATIONS
    max_new_tokens: int = 16
    processor_kwargs: dict = field(default_factory=dict)  # e.g. {max_pixels: 200704} for Qwen-VL processors
    name: str = "videomme"
    primary_metric: str = "accuracy"
    higher_is_better: bool = True
    length_unit: str = "frames"
    needs_processor: bool = True

    def __post_init__(self):
        if not self.root:
            raise ValueError("root must name the local Video-MME folder (videomme/, data/, subtitle/)")
        if self.sampling not in ("uniform", "fps"):
            raise ValueError(f"sampling must be 'uniform' or 'fps', got {self.sampling!r}")
        if self.sampling == "fps" and (isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or self.fps <= 0):
            raise ValueError(f"sampling 'fps' needs fps > 0, got {self.fps!r}")
        object.__setattr__(self, "durations", tuple(self.durations))
        bad = [d for d in self.durations if d not in DURATIONS]
        if bad or not self.durations:
            raise ValueError(f"durations must be a non-empty subset of {list(DURATIONS)}, got {list(self.durations)}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.processor_kwargs, dict):
            raise ValueError(f"processor_kwargs must be a mapping, got {self.processor_kwargs!r}")

    def check_length(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"lengths are frame counts for videomme, >= 1; got {length}")

    def make_samples(self, ctx: ModelContext, length: int, n: int, seed: int) -> list[dict]:
        """``n`` questions: the videos in a seeded order, all questions of each, so that a subset
        holds whole videos; every question when ``n`` is the total."""
        questions = [q for q in read_questions(self.root) if q["duration"] in self.durations]
        if len(questions) < n:
            raise ValueError(f"{self.root}/videomme holds {len(questions)} questions of durations "
                             f"{list(self.durations)}, {n} asked (samples)")
        videos = list(dict.fromkeys(q["videoID"] for q in questions))
        order = {v: i for i, v in enumerate(np.asarray(videos)[np.random.default_rng(seed).permutation(len(videos))])}
        questions.sort(key=lambda q: order[q["videoID"]])  # stable: file order within a video
        return [{**q, "frames": length} for q in questions[:n]]

    def inputs(self, ctx: ModelContext, sample: dict):
        """The processor's model inputs for one question, and what was sampled."""
        info = probe(video_path(self.root, sample["videoID"]))
        indices = frame_indices(info, sample["frames"], self.sampling, self.fps)
        frames = decode(info, indices)
        subtitles = None
        if self.subtitles:
            path = subtitle_path(self.root, sample["videoID"])
            subtitles = subtitles_at(read_subtitles(path), indices, info.fps) if path.exists() else []
        text = prompt(sample["question"], sample["options"], subtitles)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
        chat = ctx.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        metadata = {"total_num_frames": info.total_frames, "fps": info.fps, "width": info.width, "height": info.height,
                    "duration": info.duration, "video_backend": "pyav", "frames_indices": [int(i) for i in indices]}
        inputs = ctx.processor(text=[chat], videos=[frames], video_metadata=[metadata], do_sample_frames=False,
                               return_tensors="pt", **self.processor_kwargs)
        return inputs, {"frames_sampled": len(indices), "subtitle_lines": len(subtitles or [])}

    def evaluate(self, ctx: ModelContext, sample: dict) -> dict[str, Any]:
        inputs, sampled = ctx.cached(("videomme", sample["question_id"], sample["frames"]), lambda: self.inputs(ctx, sample))
        response, sparsity, tokens = ctx.generate_multimodal(inputs, self.max_new_tokens)
        prediction = extract_answer(response)
        return {"accuracy": float(prediction == sample["answer"]), "answered": float(prediction != ""),
                "sparsity": sparsity, **tokens, **sampled, "prediction": prediction, "answer": sample["answer"],
                "response": response, "question_id": sample["question_id"], "videoID": sample["videoID"],
                "duration": sample["duration"], "domain": sample["domain"], "sub_category": sample["sub_category"],
                "task_type": sample["task_type"]}

    def report(self, records: list[dict], full_label: str | None) -> str:
        """Markdown: per method and frame count, accuracy (%) overall, by duration, domain and task
        type, % of full, unanswered questions, sparsity and mean token counts."""
        import pandas as pd

        frame = pd.DataFrame([r for r in records if r["task"] == self.name])
        if frame.empty:
            return ""
        frames_rule = ("`frames` uniformly spaced frames" if self.sampling == "uniform"
                       else f"{self.fps} frames a second, at most `frames`")
        out = [f"# Video-MME accuracy (%) by category\n\nSubtitles: {'with' if self.subtitles else 'without'}; "
               f"{frames_rule}; an unanswered question (no letter found) counts as wrong.\n"]
        overall = []
        for (method, frames), group in frame.groupby(["method", "length"], sort=False):
            full = frame[(frame.method == full_label) & (frame.length == frames)] if full_label else frame.iloc[:0]
            acc = 100 * group.accuracy.mean()
            pct = 100 * group.accuracy.mean() / full.accuracy.mean() if len(full) and full.accuracy.mean() else float("nan")
            overall.append({"method": method, "frames": frames, "n": len(group), "accuracy": acc,
                            **{d: 100 * group[group.duration == d].accuracy.mean() for d in DURATIONS
                               if (group.duration == d).any()},
                            "% of full": pct, "unanswered": int((group.answered == 0).sum()),
                            "sparsity": group.sparsity.mean(), "visual tokens": group.visual_tokens.mean(),
                            "text tokens": group.text_tokens.mean(), "prefill tokens": group.prefill_tokens.mean()})
        out.append("## Overall and by duration\n\n" + pd.DataFrame(overall).to_markdown(index=False, floatfmt=".4g") + "\n")
        for column, title in (("domain", "domain"), ("task_type", "task type")):
            table = (frame.assign(cell=frame.method + " " + frame.length.astype(str) + "f")
                     .pivot_table(index=column, columns="cell", values="accuracy", aggfunc="mean", sort=False) * 100)
            counts = frame.groupby(column).question_id.nunique().rename("questions")
            out.append(f"## By {title}\n\n" + table.join(counts).to_markdown(floatfmt=".1f") + "\n")
        return "\n".join(out)
