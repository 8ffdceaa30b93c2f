"""LLM/VLM-as-judge for VEG, SPC and CN (method.md section 5), listwise and pairwise.

The judge grades the *spoken line* of each system (``SystemOutput.spoken``) from 0 to 100
on one metric per request, following our rubric prompts (``ebmrl/prompts/judge_*.txt``):
five bands of 20 points and the method's weights. VEG and SPC requests carry the clip's
frames; CN requests carry none. Requests use temperature 0.

**Listwise**: every system's line for a sample goes into one prompt under anonymous
labels (A, B, ...) in an order shuffled per (sample, metric) by a seeded generator, so no
system owns a position. **Pairwise**: A vs B is asked twice, once in each order; see
``combine_orders``.

**Strict replies**: a reply must be one JSON object (a single surrounding code fence is
tolerated, nothing else) that validates against the reply schema (``ListwiseReply`` /
``PairwiseReply``) and names exactly the labels asked for. An invalid reply is re-asked,
with the problem stated, up to ``max_attempts`` requests in all; then the judgement is
recorded as not scored with the reason. A score is never invented: an unreachable judge
or a judge that only writes prose leaves the sample unscored.

**Protocols** (``protocol``): ``ebmrl`` is the strict reading above. ``authors`` reads a
listwise reply as the authors' judge script does: each label's score on its own (a JSON
object found anywhere in the reply), what was read kept across re-asks, which ask only
for the labels still missing; a candidate whose score is never read scores 0
(``Judgement.zeroed``), counted in the authors' average and left out of ours; a reply
with nothing readable for any candidate leaves the sample unscored (their script drops
it). Pairwise replies are read the same lenient way.

**Cache**: valid judgements are stored in an append-only ``ResponseCache`` keyed by
(sample, every judged output's content hash, judge model id, rubric version, metric,
mode), so reruns ask the judge only about what changed. Failures are not cached: a rerun
asks again (the endpoint may be back).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ebmrl import prompts
from ebmrl.backends import BackendError, ChatRequest, GenerationClient, Message, cache_key
from ebmrl.backends.cache import ResponseCache
from ebmrl.eval.outputs import SystemOutput
from ebmrl.prompts.conversation import character_sheet, prompt_id
from ebmrl.schema import ProfileBook, Sample, history_text


# ------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class JudgeMetric:
    key: str  # veg | spc | cn
    code: str  # VEG | SPC | CN
    title: str
    sees_frames: bool

    @property
    def rubric(self) -> str:
        return prompts.load(f"judge_rubric_{self.key}").strip()


METRICS: dict[str, JudgeMetric] = {
    "veg": JudgeMetric("veg", "VEG", "Visual Evidence Grounding", sees_frames=True),
    "spc": JudgeMetric("spc", "SPC", "Situational Persona Compatibility", sees_frames=True),
    "cn": JudgeMetric("cn", "CN", "Conversational Naturalism", sees_frames=False),
}

TEMPLATES = (
    "judge_system",
    "judge_context",
    "judge_listwise",
    "judge_pairwise",
    "judge_reask",
    "judge_rubric_veg",
    "judge_rubric_spc",
    "judge_rubric_cn",
)


def rubric_version() -> str:
    """Short hash of every judge template: a reworded rubric invalidates cached judgements."""
    joined = "|".join(f"{name}:{prompts.version(name)}" for name in TEMPLATES)
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def labels(count: int) -> list[str]:
    if not 1 <= count <= 26:
        raise ValueError(f"between 1 and 26 candidates per prompt, got {count}")
    return [chr(ord("A") + i) for i in range(count)]


def shuffled(systems: Sequence[str], *parts: str) -> list[str]:
    """``systems`` in an order drawn from a generator seeded by ``parts`` (reproducible)."""
    seed = int(hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16], 16)
    order = list(systems)
    random.Random(seed).shuffle(order)
    return order


# ------------------------------------------------------------------------- context
@dataclass(frozen=True)
class JudgeContext:
    """Everything the judge is told about one sample (frames already picked and shrunk)."""

    key: str
    clip_id: str
    source: str
    assistant: str
    user: str
    assistant_profile: str
    user_profile: str
    history: str
    reference: str
    frames: np.ndarray | None = field(default=None, compare=False)
    frame_problem: str | None = None  # why there are no frames, when known

    @classmethod
    def from_sample(
        cls,
        sample: Sample,
        profiles: ProfileBook | None,
        frames: np.ndarray | None,
        frame_problem: str | None = None,
    ) -> JudgeContext:
        return cls(
            key=prompt_id(sample),
            clip_id=str(sample.clip_id or sample.video),
            source=sample.source or "their story",
            assistant=sample.assistant,
            user=sample.user,
            assistant_profile=character_sheet(profiles, sample.assistant, sample.source),
            user_profile=character_sheet(profiles, sample.user, sample.source),
            history=history_text(sample.dialogue),
            reference=" ".join(sample.target.utterance.split()),
            frames=frames,
            frame_problem=frame_problem,
        )

    @property
    def no_frames(self) -> str:
        """The reason a visual metric is not scored for this sample."""
        why = f": {self.frame_problem}" if self.frame_problem else ""
        return f"no frames of clip {self.clip_id}{why}"

    def text(self, metric: JudgeMetric) -> str:
        if metric.sees_frames:
            count = 0 if self.frames is None else len(self.frames)
            clip_note = f"The {count} images are frames of the clip, in time order."
        else:
            clip_note = "You do not see the clip for this quality: judge the words only."
        return (
            prompts.load("judge_context")
            .format(
                rubric=metric.rubric,
                source=self.source,
                assistant=self.assistant,
                assistant_profile=self.assistant_profile,
                user=self.user,
                user_profile=self.user_profile,
                history=self.history,
                clip_note=clip_note,
                reference=self.reference,
            )
            .strip()
        )


# ----------------------------------------------------------------- reply schemas
class JudgeReplyError(ValueError):
    """The judge's reply is not the JSON object asked for; the message says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LabelScore(_Strict):
    score: int | float = Field(ge=0, le=100)
    reason: str = ""


class ListwiseReply(_Strict):
    scores: dict[str, LabelScore]


class PairwiseReply(_Strict):
    winner: Literal["A", "B", "tie"]
    confidence: Literal["high", "medium", "low"] | None = None
    reason: str = ""


def _shorten(text: str, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def parse_json_object(text: str) -> dict[str, Any]:
    """The reply as a JSON object; only a single surrounding code fence is tolerated."""
    body = str(text or "").strip()
    if body.startswith("```") and body.endswith("```") and len(body) >= 6:
        body = body[3:-3]
        first_line, _, rest = body.partition("\n")
        if first_line.strip().lower() in ("", "json"):
            body = rest
        body = body.strip()
    if not body:
        raise JudgeReplyError("the reply is empty")
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise JudgeReplyError(
            f"not JSON ({exc.msg} at char {exc.pos}): {_shorten(body)!r}"
        ) from None
    if not isinstance(value, dict):
        raise JudgeReplyError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _schema_problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "<object>"
    return f"{where}: {err['msg']}"


def validate_listwise(text: str, expected: Sequence[str]) -> dict[str, LabelScore]:
    """Scores by label; raises ``JudgeReplyError`` unless exactly ``expected`` are scored."""
    data = parse_json_object(text)
    try:
        reply = ListwiseReply.model_validate(data)
    except ValidationError as exc:
        raise JudgeReplyError(f"schema: {_schema_problem(exc)}") from None
    got, wanted = set(reply.scores), set(expected)
    if got != wanted:
        missing, extra = sorted(wanted - got), sorted(got - wanted)
        parts = ([f"missing {missing}"] if missing else []) + (
            [f"unknown {extra}"] if extra else []
        )
        raise JudgeReplyError(f"labels: {', '.join(parts)} (expected exactly {sorted(wanted)})")
    return reply.scores


def validate_pairwise(text: str) -> PairwiseReply:
    data = parse_json_object(text)
    try:
        return PairwiseReply.model_validate(data)
    except ValidationError as exc:
        raise JudgeReplyError(f"schema: {_schema_problem(exc)}") from None


def embedded_object(text: str) -> dict[str, Any] | None:
    """The JSON object of a reply, tolerating prose around it (from the first ``{`` to
    the last ``}``); None when there is none."""
    try:
        return parse_json_object(text)
    except JudgeReplyError:
        pass
    body = str(text or "")
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(body[start : end + 1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def read_listwise(text: str, expected: Sequence[str]) -> tuple[dict[str, LabelScore], str | None]:
    """The authors' reading: every label of ``expected`` whose entry is valid on its own,
    and what was wrong with the others (None when every label was read)."""
    data = embedded_object(text)
    scores = data.get("scores") if data is not None else None
    if not isinstance(scores, dict):
        return {}, f"no scores object in the reply: {_shorten(text)!r}"
    read: dict[str, LabelScore] = {}
    for label in expected:
        try:
            read[label] = LabelScore.model_validate(scores.get(label))
        except ValidationError:
            continue
    missing = [label for label in expected if label not in read]
    return read, (f"no valid score for {missing}" if missing else None)


def read_pairwise(text: str) -> PairwiseReply:
    """The authors' reading of a pairwise reply: the JSON object wherever it is."""
    data = embedded_object(text)
    if data is None:
        raise JudgeReplyError(f"no JSON object in the reply: {_shorten(text)!r}")
    try:
        return PairwiseReply.model_validate(data)
    except ValidationError as exc:
        raise JudgeReplyError(f"schema: {_schema_problem(exc)}") from None


# ------------------------------------------------------------------------ results
@dataclass
class Judgement:
    """One listwise judgement: a score per system, or the reason there is none."""

    metric: str
    scores: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # label -> system
    not_scored: dict[str, str] = field(default_factory=dict)  # system -> why
    # authors protocol: scored 0 because its score could not be read (system -> why)
    zeroed: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    cached: bool = False
    last_reply: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "scores": self.scores,
            "reasons": self.reasons,
            "labels": self.labels,
            "not_scored": self.not_scored,
            "zeroed": self.zeroed,
            "attempts": self.attempts,
            "cached": self.cached,
            "last_reply": self.last_reply,
        }


@dataclass
class Verdict:
    """One pairwise request: which position won ("A", "B", "tie"), or why none."""

    winner: str | None
    reason: str = ""
    error: str | None = None
    attempts: int = 0
    cached: bool = False
    confidence: str | None = None  # high | medium | low, when the judge gives one


@dataclass
class _Asked:
    value: Any = None
    attempts: int = 0
    error: str | None = None
    reply: str | None = None
    unavailable: bool = False  # the judge could not be reached: nothing to keep


# -------------------------------------------------------------------------- judge
class Judge:
    """Asks a backend (through a ``GenerationClient``: retries, counts) for judgements."""

    def __init__(
        self,
        client: GenerationClient,
        cache: ResponseCache | None = None,
        *,
        max_attempts: int = 3,
        max_tokens: int = 512,
        seed: int = 0,
        protocol: Literal["ebmrl", "authors"] = "ebmrl",
    ):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if protocol not in ("ebmrl", "authors"):
            raise ValueError(f"protocol is 'ebmrl' or 'authors', got {protocol!r}")
        self.protocol = protocol
        self.client = client
        self.cache = cache
        self.max_attempts = max_attempts
        self.max_tokens = max_tokens
        self.seed = seed
        self.version = rubric_version()
        self.stats = {
            "requests": 0,
            "invalid_replies": 0,
            "cache_hits": 0,
            "failed": 0,
            "zeroed": 0,
        }
        self._lock = threading.Lock()  # judgements run in threads (map_concurrent)

    @property
    def model_id(self) -> str:
        return self.client.backend.model_id

    # -------------------------------------------------------------- plumbing
    def _request(self, user: str, frames: np.ndarray | None) -> ChatRequest:
        return ChatRequest(
            messages=(
                Message("system", prompts.load("judge_system").strip()),
                Message("user", user),
            ),
            frames=frames,
            max_tokens=self.max_tokens,
            temperature=0.0,
            top_p=1.0,
            seed=self.seed,
            json_mode=True,
        )

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def _send(self, asked: _Asked, prompt: str, frames: np.ndarray | None) -> bool:
        """One request of an ask: its reply into ``asked``; False when the judge could not
        be reached (``asked`` then says so)."""
        asked.attempts += 1
        self._count("requests")
        try:
            asked.reply = self.client.generate(self._request(prompt, frames))
        except BackendError as exc:
            asked.error = f"judge unavailable: {_shorten(str(exc), 300)}"
            asked.unavailable = True
            return False
        return True

    def _ask(self, user: str, frames: np.ndarray | None, validate) -> _Asked:
        """Up to ``max_attempts`` requests until ``validate(reply)`` passes."""
        asked = _Asked()
        prompt = user
        while asked.attempts < self.max_attempts:
            if not self._send(asked, prompt, frames):
                return asked
            try:
                asked.value = validate(asked.reply)
                asked.error = None
                return asked
            except JudgeReplyError as exc:
                self._count("invalid_replies")
                asked.error = str(exc)
                prompt = user + prompts.load("judge_reask").format(problem=str(exc))
        asked.error = f"invalid JSON after {asked.attempts} attempt(s): {asked.error}"
        return asked

    def _ask_each(self, user: str, frames: np.ndarray | None, names: Sequence[str]) -> _Asked:
        """The authors' way: each label read on its own, what was read kept across
        attempts, the re-ask naming the labels still missing. ``value``: label ->
        ``LabelScore`` (maybe partial); ``error``: why the rest could not be read."""
        asked = _Asked(value={})
        prompt = user
        while asked.attempts < self.max_attempts:
            if not self._send(asked, prompt, frames):
                return asked
            read, problem = read_listwise(asked.reply, names)
            asked.value.update(read)
            missing = [label for label in names if label not in asked.value]
            if not missing:
                asked.error = None
                return asked
            self._count("invalid_replies")
            asked.error = problem if not asked.value else f"no valid score for {missing}"
            prompt = user + prompts.load("judge_reask").format(problem=asked.error)
        asked.error = f"unparseable after {asked.attempts} attempt(s): {asked.error}"
        return asked

    def _key(self, *parts: str) -> str:
        # The authors' reading stores other judgements (zeros): its own cache entries.
        protocol = ("authors",) if self.protocol == "authors" else ()
        return cache_key(*parts, self.model_id, self.version, str(self.seed), *protocol)

    def _cached(self, key: str) -> dict[str, Any] | None:
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            self._count("cache_hits")
        return hit

    def _store(self, key: str, **fields: Any) -> None:
        if self.cache is not None:
            self.cache.put(key, **fields)

    # -------------------------------------------------------------- listwise
    def listwise(
        self, context: JudgeContext, metric: JudgeMetric, outputs: Sequence[SystemOutput]
    ) -> Judgement:
        """Score every output on ``metric`` in one prompt (empty lines score 0 unasked)."""
        result = Judgement(metric=metric.key)
        judged = []
        for output in outputs:
            if not output.ok:
                result.not_scored[output.system] = f"no output: {output.error}"
            elif not output.spoken:
                result.scores[output.system] = 0.0
                result.reasons[output.system] = "empty spoken line (scored 0 without the judge)"
            else:
                judged.append(output)
        if not judged:
            return result
        if metric.sees_frames and context.frames is None:
            for output in judged:
                result.not_scored[output.system] = context.no_frames
            return result
        order = shuffled([o.system for o in judged], str(self.seed), context.key, metric.key)
        by_system = {o.system: o for o in judged}
        names = labels(len(order))
        result.labels = dict(zip(names, order, strict=True))
        key = self._key(
            "listwise",
            metric.key,
            context.key,
            context.clip_id,
            json.dumps(sorted((o.system, o.digest) for o in judged)),
        )
        hit = self._cached(key)
        if hit is not None:
            result.scores.update(hit["scores"])
            result.reasons.update(hit["reasons"])
            result.zeroed.update(hit.get("zeroed", {}))
            result.attempts, result.cached = hit.get("attempts", 1), True
            return result
        candidates = "\n".join(
            f"[{label}] {by_system[system].spoken}" for label, system in result.labels.items()
        )
        user = (
            prompts.load("judge_listwise")
            .format(
                context=context.text(metric),
                assistant=context.assistant,
                candidates=candidates,
                metric=f"{metric.code} ({metric.title})",
                labels=", ".join(names),
            )
            .strip()
        )
        frames = context.frames if metric.sees_frames else None
        if self.protocol == "authors":
            asked = self._ask_each(user, frames, names)
        else:
            asked = self._ask(user, frames, lambda reply: validate_listwise(reply, names))
        result.attempts, result.last_reply = asked.attempts, asked.reply
        if not asked.value:  # nothing read (ebmrl: a reply that is not entirely valid)
            self._count("failed")
            for output in judged:
                result.not_scored[output.system] = asked.error or "no reply"
            return result
        scores = {result.labels[label]: float(entry.score) for label, entry in asked.value.items()}
        reasons = {result.labels[label]: entry.reason for label, entry in asked.value.items()}
        zeroed = {
            system: asked.error or "unparseable"
            for label, system in result.labels.items()
            if label not in asked.value
        }
        if zeroed:
            self._count("zeroed")
        result.scores.update(scores)
        result.reasons.update(reasons)
        result.zeroed.update(zeroed)
        if asked.unavailable:  # zeros from an outage are not the judge's verdict: ask again
            return result
        self._store(
            key,
            kind="listwise",
            scores=scores,
            reasons=reasons,
            zeroed=zeroed,
            attempts=asked.attempts,
        )
        return result

    # -------------------------------------------------------------- pairwise
    def verdict(
        self,
        context: JudgeContext,
        metric: JudgeMetric,
        first: SystemOutput,
        second: SystemOutput,
    ) -> Verdict:
        """Which of two lines wins on ``metric`` with ``first`` shown as [A]."""
        if not (first.ok and second.ok):
            missing = first if not first.ok else second
            return Verdict(None, error=f"no output from {missing.system}: {missing.error}")
        if not first.spoken or not second.spoken:
            # An empty line scores 0: the other one wins without asking (both empty: tie).
            winner = "tie" if first.spoken == second.spoken else ("A" if first.spoken else "B")
            return Verdict(winner, reason="empty spoken line (decided without the judge)")
        if metric.sees_frames and context.frames is None:
            return Verdict(None, error=context.no_frames)
        key = self._key(
            "pairwise", metric.key, context.key, context.clip_id, first.digest, second.digest
        )
        hit = self._cached(key)
        if hit is not None:
            return Verdict(
                hit["winner"],
                hit.get("reason", ""),
                attempts=hit.get("attempts", 1),
                cached=True,
                confidence=hit.get("confidence"),
            )
        user = (
            prompts.load("judge_pairwise")
            .format(
                context=context.text(metric),
                assistant=context.assistant,
                first=first.spoken,
                second=second.spoken,
                metric=f"{metric.code} ({metric.title})",
            )
            .strip()
        )
        frames = context.frames if metric.sees_frames else None
        read = read_pairwise if self.protocol == "authors" else validate_pairwise
        asked = self._ask(user, frames, read)
        if asked.error is not None:
            self._count("failed")
            return Verdict(None, error=asked.error, attempts=asked.attempts)
        reply: PairwiseReply = asked.value
        self._store(
            key,
            kind="pairwise",
            winner=reply.winner,
            reason=reply.reason,
            confidence=reply.confidence,
            attempts=asked.attempts,
        )
        return Verdict(
            reply.winner, reply.reason, attempts=asked.attempts, confidence=reply.confidence
        )
