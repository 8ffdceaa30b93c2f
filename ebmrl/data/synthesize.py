"""Synthesize: the training samples, from film lines (``raw_lines``) or written by an LLM.

- ``raw_lines``: the samples imported by ingest (film lines, or any released-format
  records), kept as they are; their reference traces are kept, written where missing,
  or rewritten (``traces``).
- ``llm``: for each described clip, ``samples_per_clip`` dialogues between two characters
  of the film, each built turn by turn (our code fixes who speaks when; the LLM writes
  one line per request, so a malformed reply can never break the structure). Strategy
  ``join``: the two are already talking about the scene and the user carries on;
  ``ask``: the user asks about the event straight away. The reply is the assistant's
  next line.

Every trace (perception + think) is checked against the reply it leads to; a trace that
copies the reply is regenerated with a new seed, up to ``max_attempts``, then dropped
(the whole sample in ``llm`` mode, the trace only for film lines). Every drop is
counted in the report. Samples are split by session (``ebmrl.data.split``). Every
setting comes from the ``synthesize`` section of params.yaml (``SynthesizeSection`` and
its ``generation``).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ebmrl import prompts
from ebmrl.backends import ChatRequest, GenerationClient, Message, map_concurrent
from ebmrl.config import SynthesizeSection
from ebmrl.data.copycheck import copies_reply, copy_score
from ebmrl.schema import CharacterProfile, Clip, ProfileBook, Sample, Turn, history_text
from ebmrl.tags import DEFAULT_TAGS, TagNames

MAX_LINE_CHARS = 400


class SynthesisError(ValueError):
    """Inputs that cannot make samples (unknown film, missing description); names them."""


@dataclass
class Drops:
    """What was dropped or changed, and why (the report)."""

    reasons: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, reason: str, **where: Any) -> None:
        self.reasons[reason] += 1
        if len(self.examples) < 100:
            self.examples.append({"reason": reason, **where})


# --------------------------------------------------------------------------- text
_SPEAKER_PREFIX = re.compile(r"^\s*[\w .'-]{1,40}:\s+")
_TAG = re.compile(r"</?\w+>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_line(text: str, speakers: Sequence[str] = ()) -> str:
    """One spoken line from a raw reply: first non-empty line, no speaker name, tags,
    surrounding quotes or stage directions in brackets."""
    for raw in text.splitlines():
        line = _CONTROL.sub("", _TAG.sub("", raw)).strip()
        for name in speakers:
            if line.lower().startswith(name.lower() + ":"):
                line = line[len(name) + 1 :].strip()
        line = _SPEAKER_PREFIX.sub("", line) if not speakers else line
        line = re.sub(r"\([^)]*\)|\[[^\]]*\]|\*[^*]*\*", "", line).strip()
        line = line.strip("\"'“”‘’ ").strip()
        if line:
            return " ".join(line.split())[:MAX_LINE_CHARS]
    return ""


def clean_block(text: str) -> str:
    return " ".join(_CONTROL.sub("", _TAG.sub("", text)).split())[: 4 * MAX_LINE_CHARS]


def _seed(*parts: Any) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


# ----------------------------------------------------------------------- characters
def film_of(book: ProfileBook, source: str | None) -> str:
    if source is not None:
        film = book.movie_aliases.get(source, source)
        if film not in book.movies:
            raise SynthesisError(
                f"film {source!r} has no profiles (known: {', '.join(book.movies)})"
            )
        return film
    if len(book.movies) != 1:
        raise SynthesisError(
            f"the profiles hold {len(book.movies)} films ({', '.join(book.movies)}): set synthesize.source"
        )
    return next(iter(book.movies))


def cast(book: ProfileBook, film: str) -> tuple[list[CharacterProfile], list[CharacterProfile]]:
    """(assistants, users): main characters play; anyone else in the film or a global
    persona (``user_fan``) may talk to them."""
    characters = book.movies[film]
    main = book.character_tiers.get(film, {}).get("main") or list(characters)
    assistants = [characters[n] for n in main if n in characters]
    users = list(characters.values()) + list(book.global_user_profiles.values())
    if not assistants or len(users) < 2:
        raise SynthesisError(
            f"film {film!r} needs at least one main character and a second speaker"
        )
    return assistants, users


# ---------------------------------------------------------------------- generation
class Writer:
    """Writes dialogue lines and traces through a ``GenerationClient`` (cached, retried),
    as ``section`` says (``seed``, ``max_attempts``, ``copy_threshold``, ``generation``)."""

    def __init__(
        self,
        client: GenerationClient,
        section: SynthesizeSection,
        source: str,
        tags: TagNames = DEFAULT_TAGS,
    ):
        self.client, self.section, self.source = client, section, source
        self.tags = tags  # the traces' tag names (params.yaml ``tags``)

    def _ask(self, system: str | None, user: str, seed: int) -> str:
        generation = self.section.generation
        messages = ((Message("system", system),) if system else ()) + (Message("user", user),)
        request = ChatRequest(
            messages=messages,
            max_tokens=generation.max_tokens,
            temperature=generation.temperature,
            top_p=generation.top_p,
            seed=seed,
        )
        return self.client.generate(request)

    def line(
        self,
        speaker: CharacterProfile,
        listener: CharacterProfile,
        description: str,
        history: Sequence[Turn],
        instruction: str,
        seed_parts: tuple[Any, ...],
    ) -> str:
        """The next line ``speaker`` says; retried with a new seed when it comes back empty."""
        system = prompts.load("synth_line_system").format(source=self.source).strip()
        user = prompts.load("synth_line_user").format(
            description=description,
            speaker=speaker.name,
            speaker_profile=speaker.describe(),
            listener=listener.name,
            listener_profile=listener.describe(),
            history=history_text(history),
            instruction=instruction,
        )
        for attempt in range(self.section.max_attempts):
            text = clean_line(
                self._ask(system, user, _seed(self.section.seed, *seed_parts, attempt)),
                [speaker.name],
            )
            if text:
                return text
        return ""

    def trace(
        self, sample: Sample, description: str, profile: CharacterProfile | None
    ) -> tuple[str | None, float]:
        """A perception + think trace for ``sample`` that does not copy its reply, or
        (None, best score) after ``max_attempts`` copies."""
        reply = sample.target.utterance
        best = 1.0
        for attempt in range(self.section.max_attempts):
            seed = _seed(self.section.seed, sample.sample_id, "trace", attempt)
            perception = clean_block(
                self._ask(
                    None,
                    prompts.load("synth_trace_perception").format(description=description),
                    seed,
                )
            )
            think = clean_block(
                self._ask(
                    None,
                    prompts.load("synth_trace_think").format(
                        assistant=sample.assistant,
                        source=sample.source or self.source,
                        user=sample.user,
                        assistant_profile=profile.describe() if profile else "",
                        perception=perception,
                        history=history_text(sample.dialogue),
                        reply=reply,
                    ),
                    seed + 1,
                )
            )
            trace = f"{perception} {think}"
            score = copy_score(trace, reply)
            best = min(best, score)
            if perception and think and not copies_reply(trace, reply, self.section.copy_threshold):
                return Sample.trace(perception, think, self.tags), score
        return None, best


INSTRUCTIONS = {
    "history": "Write the next line {speaker} says in the conversation the two are having about what they are seeing.",
    "join": "{speaker} joins in and carries the conversation on: write {speaker}'s next line, reacting to what was just said and to the scene.",
    "ask": "{speaker} asks {listener} about the event they have just witnessed: write {speaker}'s question or remark, as a person who was there.",
    "reply": "Write the line {speaker} says next, in character, reacting to {listener}'s words and to what is happening on screen.",
}


@dataclass(frozen=True)
class DialogueJob:
    clip: Clip
    description: str
    index: int  # k-th dialogue of this clip
    strategy: str
    assistant: CharacterProfile
    user: CharacterProfile


def plan_dialogues(
    clips: Sequence[Clip],
    descriptions: dict[str, str],
    book: ProfileBook,
    film: str,
    section: SynthesizeSection,
) -> list[DialogueJob]:
    """Who talks about which clip with which strategy: seeded, so reruns hit the cache."""
    assistants, users = cast(book, film)
    jobs = []
    for clip in clips:
        if clip.clip_id not in descriptions:
            raise SynthesisError(
                f"clip {clip.clip_id} ({clip.uri}) has no description: run annotate first"
            )
        for k in range(section.samples_per_clip):
            rng = random.Random(_seed(section.seed, clip.clip_id, k))
            assistant = rng.choice(assistants)
            user = rng.choice([u for u in users if u.name != assistant.name])
            strategies = section.strategies
            strategy = strategies[(k + rng.randrange(len(strategies))) % len(strategies)]
            jobs.append(DialogueJob(clip, descriptions[clip.clip_id], k, strategy, assistant, user))
    return jobs


def write_dialogue(
    writer: Writer, job: DialogueJob, sample_id: int, film: str
) -> tuple[Sample | None, str | None]:
    """One LLM sample (dialogue + reply + trace), or (None, why it was dropped)."""
    s = writer.section
    turns: list[Turn] = []
    a, u = job.assistant, job.user
    seed = (job.clip.clip_id, job.index)
    if job.strategy == "join":
        # The ongoing exchange alternates and ends with the assistant: the user goes on.
        for t in range(s.history_turns):
            speaker, listener = (a, u) if (s.history_turns - t) % 2 == 1 else (u, a)
            text = writer.line(
                speaker,
                listener,
                job.description,
                turns,
                INSTRUCTIONS["history"].format(speaker=speaker.name),
                (*seed, "h", t),
            )
            if not text:
                return None, "empty dialogue line"
            turns.append(Turn(speaker=speaker.name, utterance=text))
    opener = writer.line(
        u,
        a,
        job.description,
        turns,
        INSTRUCTIONS[job.strategy].format(speaker=u.name, listener=a.name),
        (*seed, "u"),
    )
    if not opener:
        return None, "empty dialogue line"
    turns.append(Turn(speaker=u.name, utterance=opener))
    reply = writer.line(
        a,
        u,
        job.description,
        turns,
        INSTRUCTIONS["reply"].format(speaker=a.name, listener=u.name),
        (*seed, "a"),
    )
    if not reply:
        return None, "empty reply"
    sample = Sample(
        sample_id=sample_id,
        session_id=job.clip.session_id or job.clip.clip_id,
        user=u.name,
        assistant=a.name,
        source=film,
        dialogue=turns,
        target=Turn(speaker=a.name, utterance=reply),
        video=job.clip.uri,
        clip_id=job.clip.clip_id,
        generation_type="llm_api",
        data_type="video",
        problem_type="free-form",
        solution=f"<answer>{reply}</answer>",
        extra={"strategy": job.strategy},
    )
    trace, score = writer.trace(sample, job.description, a)
    if trace is None:
        return None, "trace copies the reply"
    return sample.model_copy(update={"process": trace}), None


@dataclass
class SynthResult:
    samples: list[Sample]
    drops: Drops
    stats: dict[str, Any] = field(default_factory=dict)


def llm_samples(
    writer: Writer,
    clips: Sequence[Clip],
    descriptions: dict[str, str],
    book: ProfileBook,
    film: str,
    *,
    concurrency: int = 4,
    first_id: int = 1,
    progress: bool = False,
) -> SynthResult:
    jobs = plan_dialogues(clips, descriptions, book, film, writer.section)
    outcomes = map_concurrent(
        lambda item: write_dialogue(writer, item[1], first_id + item[0], film),
        list(enumerate(jobs)),
        concurrency=concurrency,
        desc="synthesize dialogues",
        progress=progress,
    )
    drops, samples = Drops(), []
    for outcome in outcomes:
        _, job = outcome.item
        where = {"clip_id": job.clip.clip_id, "dialogue": job.index}
        if outcome.error is not None:
            drops.add(
                f"generation failed: {type(outcome.error).__name__}",
                error=str(outcome.error)[:300],
                **where,
            )
            continue
        sample, reason = outcome.result
        if sample is None:
            drops.add(reason, **where)
        else:
            samples.append(sample)
    return SynthResult(samples, drops, {"dialogues_planned": len(jobs)})


def film_line_samples(
    imported: Sequence[Sample],
    ok_clip_ids: set[str],
    *,
    traces: str,
    writer: Writer | None,
    descriptions: dict[str, str],
    book: ProfileBook,
    copy_threshold: float,
    concurrency: int = 4,
    progress: bool = False,
) -> SynthResult:
    """The imported samples whose clip is ok; traces kept, filled in or rewritten."""
    drops = Drops()
    samples = []
    for sample in imported:
        if sample.clip_id not in ok_clip_ids:
            drops.add("clip not in the manifest's ok clips", sample_id=sample.sample_id)
            continue
        if sample.process and traces == "keep":
            text = f"{sample.perception or ''} {sample.think or ''}"
            if copies_reply(text, sample.target.utterance, copy_threshold):
                drops.add("given trace copies the reply: trace removed", sample_id=sample.sample_id)
                sample = sample.model_copy(update={"process": None})
        samples.append(sample)
    wanted = [
        i
        for i, s in enumerate(samples)
        if traces == "regenerate" or (traces == "generate_missing" and not s.has_trace)
    ]
    if wanted:
        if writer is None:
            raise SynthesisError(f"traces: {traces} needs a backend")
        missing = sorted(
            {samples[i].clip_id for i in wanted if samples[i].clip_id not in descriptions}
        )
        if missing:
            raise SynthesisError(
                f"clip(s) without a description: {', '.join(missing[:10])}: run annotate first"
            )

        def make(index: int) -> tuple[str | None, float]:
            sample = samples[index]
            return writer.trace(
                sample, descriptions[sample.clip_id], book.get(sample.assistant, sample.source)
            )

        for outcome in map_concurrent(
            make, wanted, concurrency=concurrency, desc="synthesize traces", progress=progress
        ):
            sample = samples[outcome.item]
            if outcome.error is not None:
                drops.add(
                    f"trace generation failed: {type(outcome.error).__name__}",
                    sample_id=sample.sample_id,
                )
                samples[outcome.item] = sample.model_copy(update={"process": None})
                continue
            trace, _ = outcome.result
            if trace is None:
                drops.add(
                    "generated trace copies the reply: trace dropped", sample_id=sample.sample_id
                )
            samples[outcome.item] = sample.model_copy(update={"process": trace})
    return SynthResult(samples, drops, {"traces_written": len(wanted)})


def uniform_ids(samples: list[Sample]) -> list[Sample]:
    """One type of ``sample_id`` per table (datasets cannot mix ints and strings)."""
    if all(isinstance(s.sample_id, int) for s in samples):
        return samples
    return [s.model_copy(update={"sample_id": str(s.sample_id)}) for s in samples]
