"""Zero-shot VideoQA: ask each question with the clip's frames, read the answer, score it.

An *answerer* is any ``(item, frames) -> text`` callable: a VLM through a backend
(``vlm_answerer``: the ``<perception><think><answer>`` prompt, greedy decoding) or, in
tests, a deterministic rule. Frames come from our video module (uniform sampling with
decord, resized to a pixel budget). Each question ends as one of:

- ``scored`` and correct or wrong: an unparseable answer is wrong, and also counted in
  ``unparseable``;
- ``not_scored`` with the reason (the video is missing or does not decode, the backend
  failed): left out of the accuracy and counted, never guessed.
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
from ebmrl.eval.videoqa.formats import OPTION_LETTERS, QAItem
from ebmrl.eval.videoqa.parsing import answer_region, parse_choice, parse_open, parse_yes_no
from ebmrl.tags import DEFAULT_TAGS, tag_names
from ebmrl.video import VideoError, probe, sample_frames

Answerer = Callable[[QAItem, np.ndarray], str]


@dataclass(frozen=True)
class QAResult:
    benchmark: str
    qid: str
    system: str
    qtype: str
    kind: str
    answer: str  # the gold answer
    status: str  # scored | not_scored
    text: str = ""
    prediction: str | None = None
    correct: bool = False
    from_block: bool = False
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict(item: QAItem, text: str, tags: Sequence[str] = DEFAULT_TAGS) -> str | None:
    if item.kind == "choice":
        return parse_choice(text, item.options, tags)
    if item.kind == "yes_no":
        return parse_yes_no(text, tags)
    return parse_open(text, tags)


def is_correct(item: QAItem, prediction: str | None) -> bool:
    if prediction is None:
        return False
    if item.kind == "open":
        return prediction == " ".join(item.answer.lower().split())
    return prediction == item.answer


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


# -------------------------------------------------------------------- answering
def videoqa_request(
    item: QAItem, frames: np.ndarray, max_tokens: int, tags: Sequence[str] = DEFAULT_TAGS
) -> ChatRequest:
    """The ``<perception><think><answer>`` prompt for one question (in ``tags``), greedy."""
    if item.kind == "choice":
        options = "\n".join(f"({OPTION_LETTERS[i]}) {text}" for i, text in enumerate(item.options))
        user = prompts.load("videoqa_choice").format(question=item.question, options=options)
    elif item.kind == "yes_no":
        user = prompts.load("videoqa_yes_no").format(question=item.question)
    else:
        user = prompts.load("videoqa_open").format(question=item.question)
    return ChatRequest(
        messages=(
            Message(
                "system",
                prompts.load("videoqa_system").format(**tag_names(tags)._asdict()).strip(),
            ),
            Message("user", user.strip()),
        ),
        frames=frames,
        max_tokens=max_tokens,
        temperature=0.0,
        top_p=1.0,
        seed=0,
    )


def vlm_answerer(
    client: GenerationClient, max_tokens: int, tags: Sequence[str] = DEFAULT_TAGS
) -> Answerer:
    """Answers with a VLM backend (cached by the client: reruns do not regenerate)."""

    def answer(item: QAItem, frames: np.ndarray) -> str:
        request = videoqa_request(item, frames, max_tokens, tags)
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
) -> list[QAResult]:
    """One ``QAResult`` per item, in order; failures are recorded per question."""

    def run(item: QAItem) -> QAResult:
        base = {
            "benchmark": item.benchmark,
            "qid": item.qid,
            "system": system,
            "qtype": item.qtype,
            "kind": item.kind,
            "answer": item.answer,
        }
        try:
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
        prediction = predict(item, text, tags)
        return QAResult(
            **base,
            status="scored",
            text=text,
            prediction=prediction,
            correct=is_correct(item, prediction),
            from_block=answer_region(text, tags)[1],
        )

    outcomes = map_concurrent(run, items, concurrency=concurrency, desc=system, progress=progress)
    for outcome in outcomes:
        if outcome.error is not None:
            raise outcome.error
    return [o.result for o in outcomes]


# ---------------------------------------------------------------------- summary
def _accuracy(results: Sequence[QAResult]) -> dict[str, Any]:
    scored = [r for r in results if r.status == "scored"]
    correct = sum(r.correct for r in scored)
    return {
        "questions": len(results),
        "scored": len(scored),
        "correct": correct,
        "accuracy": round(correct / len(scored), 6) if scored else 0.0,
        "unparseable": sum(r.prediction is None for r in scored),
        "not_scored": len(results) - len(scored),
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
