"""Zero-shot VideoQA: ask each question with the clip's frames, read the answer, score it.

An *answerer* is any ``(item, frames) -> text`` callable: a VLM through a backend
(``vlm_answerer``: the ``<perception><think><answer>`` prompt, greedy decoding) or, in
tests, a deterministic rule. Frames come from our video module (uniform sampling with
decord, resized to a pixel budget). Each question ends as one of:

- ``scored`` and correct or wrong: an unparseable answer is wrong, and also counted in
  ``unparseable``;
- ``not_scored`` with the reason (the video is missing or does not decode, the backend
  failed): left out of the accuracy and counted, never guessed.

Every scored answer is read twice: by our lenient parser (``accuracy``) and by the
authors' exact match of the answer block (``authors.accuracy``). ``protocol`` is how the
question is *asked*: ``ebmrl`` labels options (A)...(E); ``authors`` labels them
(0)...(4) and wants the digit, and for PororoQA adds a character list and shows two
frames of each shot around the supporting one (``shot_frames``), when the annotations
give those shots.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ebmrl import prompts
from ebmrl.backends import ChatRequest, GenerationClient, Message, map_concurrent
from ebmrl.eval.videoqa.formats import QAItem
from ebmrl.eval.videoqa.parsing import (
    answer_region,
    exact_match,
    option_labels,
    parse_choice,
    parse_open,
    parse_yes_no,
)
from ebmrl.tags import DEFAULT_TAGS, tag_names
from ebmrl.video import VideoError, probe, read_frames, resize_frames, sample_frames

Answerer = Callable[[QAItem, np.ndarray], str]


@dataclass(frozen=True)
class QAResult:
    benchmark: str
    qid: str
    system: str
    qtype: str
    kind: str
    answer: str  # the gold answer (an option's label as asked: a letter or a digit)
    status: str  # scored | not_scored
    text: str = ""
    prediction: str | None = None
    correct: bool = False
    from_block: bool = False
    reason: str | None = None
    exact_correct: bool = False  # the authors' exact match of the answer block
    answer_block: bool = False  # the authors' regex found an answer block

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def labels_for(item: QAItem, protocol: str = "ebmrl") -> str:
    """The option labels the question is asked with: letters (ours) or digits (authors)."""
    return option_labels(len(item.options), digits=protocol == "authors")


def gold(item: QAItem, protocol: str = "ebmrl") -> str:
    """The right answer as asked: an option's label, or the answer text."""
    if item.kind == "choice":
        return labels_for(item, protocol)[item.answer_index]
    return item.answer


def predict(
    item: QAItem, text: str, tags: Sequence[str] = DEFAULT_TAGS, protocol: str = "ebmrl"
) -> str | None:
    if item.kind == "choice":
        return parse_choice(text, item.options, tags, labels_for(item, protocol))
    if item.kind == "yes_no":
        return parse_yes_no(text, tags)
    return parse_open(text, tags)


def is_correct(item: QAItem, prediction: str | None, protocol: str = "ebmrl") -> bool:
    if prediction is None:
        return False
    if item.kind == "open":
        return prediction == " ".join(item.answer.lower().split())
    return prediction == gold(item, protocol)


# ------------------------------------------------------------------------- frames
def fit_pixels(width: int, height: int, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) scaled to fit ``max_pixels`` (even sides), or None if it fits."""
    if width * height <= max_pixels:
        return None
    scale = (max_pixels / (width * height)) ** 0.5
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


class FrameReader:
    """``count`` uniform frames of a video under ``max_pixels`` each (thread-safe).

    The last ``keep`` videos are kept decoded (questions about one video come together);
    a video that cannot be read raises ``VideoError`` with the reason.
    """

    def __init__(self, count: int, max_pixels: int, keep: int = 32):
        self.count = count
        self.max_pixels = max_pixels
        self.keep = keep
        self._frames: OrderedDict[str, np.ndarray | VideoError] = OrderedDict()
        self._lock = threading.Lock()

    def _decode(self, video: str) -> np.ndarray | VideoError:
        try:
            info = probe(video)
            size = fit_pixels(info.width, info.height, self.max_pixels)
            frames, _, _ = sample_frames(video, count=self.count, size=size)
            return frames
        except VideoError as exc:
            return exc

    def __call__(self, video: str) -> np.ndarray:
        with self._lock:
            cached = self._frames.get(video)
            if cached is not None:
                self._frames.move_to_end(video)
        if cached is None:
            cached = self._decode(video)
            with self._lock:
                self._frames[video] = cached
                while len(self._frames) > self.keep:
                    self._frames.popitem(last=False)
        if isinstance(cached, VideoError):
            raise cached
        return cached


SHOT_FRAME_FRACTIONS = (0.33, 0.66)  # the authors: two frames of each PororoQA shot


def _shot_indices(info) -> list[int]:
    if info.num_frames <= 1:
        return [0] * len(SHOT_FRAME_FRACTIONS)
    return [int(info.num_frames * f) for f in SHOT_FRAME_FRACTIONS]


def shot_frames(shots: Sequence[str], max_pixels: int) -> np.ndarray:
    """Two frames of each shot (a third and two thirds in; a one-frame shot twice), all
    at the first shot's size under ``max_pixels``; raises ``VideoError``."""
    parts, size = [], None
    for shot in shots:
        frames, _, info = read_frames(shot, _shot_indices)
        if size is None:
            size = fit_pixels(info.width, info.height, max_pixels) or (info.width, info.height)
        if frames.shape[1:3] != (size[1], size[0]):
            frames = resize_frames(frames, size[1], size[0])
        parts.append(frames)
    if not parts:
        raise VideoError("", "no shots")
    return np.concatenate(parts)


# -------------------------------------------------------------------- answering
def videoqa_request(
    item: QAItem,
    frames: np.ndarray,
    max_tokens: int,
    tags: Sequence[str] = DEFAULT_TAGS,
    protocol: str = "ebmrl",
) -> ChatRequest:
    """The ``<perception><think><answer>`` prompt for one question (in ``tags``), greedy;
    options labelled as ``protocol`` asks (letters, or the authors' digits)."""
    names = tag_names(tags)
    if item.kind == "choice":
        labels = labels_for(item, protocol)
        options = "\n".join(f"({labels[i]}) {text}" for i, text in enumerate(item.options))
        user = prompts.load("videoqa_choice").format(
            question=item.question,
            options=options,
            answer=names.answer,
            label_kind="number" if protocol == "authors" else "letter",
        )
    elif item.kind == "yes_no":
        user = prompts.load("videoqa_yes_no").format(question=item.question, answer=names.answer)
    else:
        user = prompts.load("videoqa_open").format(question=item.question, answer=names.answer)
    system = prompts.load("videoqa_system").format(**names._asdict()).strip()
    if protocol == "authors" and item.format == "pororoqa":
        system += "\n\n" + prompts.load("videoqa_pororo_characters").strip()
    return ChatRequest(
        messages=(
            Message("system", system),
            Message("user", user.strip()),
        ),
        frames=frames,
        max_tokens=max_tokens,
        temperature=0.0,
        top_p=1.0,
        seed=0,
    )


def vlm_answerer(
    client: GenerationClient,
    max_tokens: int,
    tags: Sequence[str] = DEFAULT_TAGS,
    protocol: str = "ebmrl",
) -> Answerer:
    """Answers with a VLM backend (cached by the client: reruns do not regenerate)."""

    def answer(item: QAItem, frames: np.ndarray) -> str:
        request = videoqa_request(item, frames, max_tokens, tags, protocol)
        return client.generate(request, benchmark=item.benchmark, qid=item.qid)

    return answer


def answer_questions(
    items: Sequence[QAItem],
    system: str,
    answerer: Answerer,
    frames: Callable[[str], np.ndarray],
    *,
    concurrency: int = 1,
    progress: bool = False,
    tags: Sequence[str] = DEFAULT_TAGS,
    protocol: str = "ebmrl",
    max_pixels: int = 100_352,
) -> list[QAResult]:
    """One ``QAResult`` per item, in order; failures are recorded per question.
    ``protocol="authors"``: a PororoQA question with ``shots`` is shown two frames of
    each (``max_pixels`` each) instead of ``frames(item.video)``."""

    def run(item: QAItem) -> QAResult:
        right = gold(item, protocol)
        base = {
            "benchmark": item.benchmark,
            "qid": item.qid,
            "system": system,
            "qtype": item.qtype,
            "kind": item.kind,
            "answer": right,
        }
        try:
            if protocol == "authors" and item.shots:
                clip = shot_frames(item.shots, max_pixels)
            else:
                clip = frames(item.video)
        except VideoError as exc:
            return QAResult(
                **base, status="not_scored", reason=f"video unreadable: {exc.reason} ({exc.uri})"
            )
        try:
            text = answerer(item, clip)
        except Exception as exc:  # recorded per question; the others still count
            return QAResult(
                **base, status="not_scored", reason=f"answer failed: {type(exc).__name__}: {exc}"
            )
        prediction = predict(item, text, tags, protocol)
        exact, block = exact_match(text, right, item.kind, tags)
        return QAResult(
            **base,
            status="scored",
            text=text,
            prediction=prediction,
            correct=is_correct(item, prediction, protocol),
            from_block=answer_region(text, tags)[1],
            exact_correct=exact,
            answer_block=block,
        )

    outcomes = map_concurrent(run, items, concurrency=concurrency, desc=system, progress=progress)
    for outcome in outcomes:
        if outcome.error is not None:
            raise outcome.error
    return [o.result for o in outcomes]


# ---------------------------------------------------------------------- summary
def _accuracy(results: Sequence[QAResult]) -> dict[str, Any]:
    """Our figures (lenient parser) and the authors' (``authors``: exact match of the
    answer block), both over the scored questions."""
    scored = [r for r in results if r.status == "scored"]
    correct = sum(r.correct for r in scored)
    exact = sum(r.exact_correct for r in scored)
    return {
        "questions": len(results),
        "scored": len(scored),
        "correct": correct,
        "accuracy": round(correct / len(scored), 6) if scored else 0.0,
        "unparseable": sum(r.prediction is None for r in scored),
        "not_scored": len(results) - len(scored),
        "authors": {
            "correct": exact,
            "accuracy": round(exact / len(scored), 6) if scored else 0.0,
            "no_answer_block": sum(not r.answer_block for r in scored),
        },
    }


def summarize(
    results: Sequence[QAResult], group: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """Accuracy over scored questions, per question type (and per group of types)."""
    summary = _accuracy(results)
    types = sorted({r.qtype for r in results})
    if len(types) > 1 or group is not None:
        summary["by_type"] = {t: _accuracy([r for r in results if r.qtype == t]) for t in types}
    if group is not None:
        groups = sorted({group(t) for t in types})
        summary["by_group"] = {
            g: _accuracy([r for r in results if group(r.qtype) == g]) for g in groups
        }
    reasons: dict[str, int] = {}
    for r in results:
        if r.reason:
            kind = r.reason.split(":", 1)[0]
            reasons[kind] = reasons.get(kind, 0) + 1
    if reasons:
        summary["not_scored_reasons"] = reasons
    return summary
