"""Each system's outputs on the evaluation samples: the training prompt, cached.

A system is a backend (a local model folder or hub id, or an OpenAI-compatible endpoint
serving it) with a prompt mode (``ebm``: the training prompt; ``cot`` / ``vanilla``: the
baselines' formats) and the clip or not (``frames: false``: a text-only baseline). The
request is what training uses (``build_prompt``: the role-play system prompt, then the
clip as one video with the user turn) with the evaluation's decoding (``evaluate.
decoding``: greedy by default, the authors' seeded sampling in the paper profile), so a
rerun gives the same text and the ``GenerationClient`` cache (keyed by the model's
fingerprint and the request's content) never regenerates it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ebmrl.backends import BackendError, ChatRequest, GenerationClient, Message, map_concurrent
from ebmrl.config import DecodingSection
from ebmrl.eval.outputs import SystemOutput
from ebmrl.frame_store import FrameStore, FrameStoreError, MissingClipError
from ebmrl.prompts.conversation import TRAINING_TEMPLATES, build_prompt, prompt_id
from ebmrl.schema import ProfileBook, Sample
from ebmrl.tags import DEFAULT_TAGS, TagNames

GREEDY = DecodingSection()
# evaluate.systems[].prompt -> (output format, closing request) prompt templates: ours
# (the training prompt), a plain chain of thought, a direct answer.
PROMPT_MODES: dict[str, tuple[str, str]] = {
    "ebm": TRAINING_TEMPLATES,
    "cot": ("roleplay_format_cot", "roleplay_request_cot"),
    "vanilla": ("roleplay_format_vanilla", "roleplay_request_vanilla"),
}


def _text(message: dict) -> str:
    return "\n".join(b["text"] for b in message["content"] if b.get("type") == "text")


def roleplay_request(
    sample: Sample,
    profiles: ProfileBook | None,
    frames: np.ndarray | None,
    *,
    max_tokens: int,
    decoding: DecodingSection = GREEDY,
    tags: TagNames = DEFAULT_TAGS,
    mode: str = "ebm",
) -> ChatRequest:
    """The role-play prompt (in ``mode``, a key of ``PROMPT_MODES``) as a chat request;
    the frames, if any, go with the user turn."""
    if mode not in PROMPT_MODES:
        raise ValueError(f"prompt mode is one of {sorted(PROMPT_MODES)}, got {mode!r}")
    conversation = build_prompt(sample, profiles, tags, PROMPT_MODES[mode])
    messages = tuple(Message(m["role"], _text(m)) for m in conversation)
    return ChatRequest(
        messages=messages,
        frames=frames,
        max_tokens=max_tokens,
        temperature=decoding.temperature,
        top_p=decoding.top_p,
        seed=decoding.seed,
    )


@dataclass
class ClipFrames:
    """Frames of the samples' clips, and why any could not be read."""

    frames: dict[str, np.ndarray]
    missing: dict[str, str]

    def of(self, sample: Sample) -> np.ndarray | None:
        return self.frames.get(str(sample.clip_id))

    def why_missing(self, sample: Sample) -> str | None:
        return self.missing.get(str(sample.clip_id))


def load_clip_frames(samples: Sequence[Sample], store: FrameStore) -> ClipFrames:
    """Read each clip once; a missing or unreadable clip is recorded, never fatal."""
    frames: dict[str, np.ndarray] = {}
    missing: dict[str, str] = {}
    for sample in samples:
        clip_id = str(sample.clip_id)
        if clip_id in frames or clip_id in missing:
            continue
        if not sample.clip_id:
            missing[clip_id] = f"sample {prompt_id(sample)} has no clip_id"
            continue
        try:
            frames[clip_id] = np.asarray(store.frames(clip_id))
        except (MissingClipError, FrameStoreError, OSError, ValueError, KeyError) as exc:
            missing[clip_id] = f"clip {clip_id} unreadable: {exc}"
    return ClipFrames(frames, missing)


def generate_outputs(
    system: str,
    client: GenerationClient,
    samples: Sequence[Sample],
    clips: ClipFrames,
    profiles: ProfileBook | None,
    *,
    max_tokens: int,
    decoding: DecodingSection = GREEDY,
    mode: str = "ebm",
    with_frames: bool = True,
    concurrency: int = 1,
    progress: bool = False,
    tags: TagNames = DEFAULT_TAGS,
) -> dict[str, SystemOutput]:
    """``prompt_id -> SystemOutput`` for every sample (errors recorded per sample).
    ``with_frames=False``: the clip is withheld (a missing clip does not matter then)."""
    outputs: dict[str, SystemOutput] = {}
    todo = []
    for sample in samples:
        why = clips.why_missing(sample) if with_frames else None
        if why is not None:
            outputs[prompt_id(sample)] = SystemOutput(system, error=why, tags=tags)
        else:
            todo.append(sample)

    def generate(sample: Sample) -> str:
        request = roleplay_request(
            sample,
            profiles,
            clips.of(sample) if with_frames else None,
            max_tokens=max_tokens,
            decoding=decoding,
            tags=tags,
            mode=mode,
        )
        return client.generate(request, system=system, sample=prompt_id(sample))

    for outcome in map_concurrent(
        generate, todo, concurrency=concurrency, desc=f"generate {system}", progress=progress
    ):
        key = prompt_id(outcome.item)
        if outcome.error is None:
            outputs[key] = SystemOutput(system, text=str(outcome.result), tags=tags)
        else:
            # Recorded per sample (the report shows it); the other samples still count.
            error = outcome.error
            kind = "" if isinstance(error, BackendError) else f"{type(error).__name__}: "
            outputs[key] = SystemOutput(
                system, error=f"generation failed: {kind}{error}", tags=tags
            )
    return outputs


def outputs_by_sample(
    per_system: Mapping[str, Mapping[str, SystemOutput]], samples: Sequence[Sample]
) -> dict[str, list[SystemOutput]]:
    """``prompt_id -> [each system's output]``, systems in the order given."""
    return {
        prompt_id(s): [outputs[prompt_id(s)] for outputs in per_system.values()] for s in samples
    }
