"""Each system's outputs on the evaluation samples: greedy, the training prompt, cached.

A system is a backend (a local model folder or hub id, or an OpenAI-compatible endpoint
serving it). The request is exactly what training uses (``build_prompt``: the role-play
system prompt, then the clip as one video with the user turn) with temperature 0, so a
rerun gives the same text and the ``GenerationClient`` cache (keyed by the model's
fingerprint and the request's content) never regenerates it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ebmrl.backends import BackendError, ChatRequest, GenerationClient, Message, map_concurrent
from ebmrl.eval.outputs import SystemOutput
from ebmrl.frame_store import FrameStore, FrameStoreError, MissingClipError
from ebmrl.schema import ProfileBook, Sample
from ebmrl.tags import DEFAULT_TAGS, TagNames
from ebmrl.train.prompting import build_prompt, prompt_id


def _text(message: dict) -> str:
    return "\n".join(b["text"] for b in message["content"] if b.get("type") == "text")


def roleplay_request(
    sample: Sample,
    profiles: ProfileBook | None,
    frames: np.ndarray,
    *,
    max_tokens: int,
    seed: int = 0,
    tags: TagNames = DEFAULT_TAGS,
) -> ChatRequest:
    """The training prompt as a greedy chat request; the frames go with the user turn."""
    conversation = build_prompt(sample, profiles, tags)
    messages = tuple(Message(m["role"], _text(m)) for m in conversation)
    return ChatRequest(
        messages=messages,
        frames=frames,
        max_tokens=max_tokens,
        temperature=0.0,
        top_p=1.0,
        seed=seed,
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
    concurrency: int = 1,
    progress: bool = False,
    tags: TagNames = DEFAULT_TAGS,
) -> dict[str, SystemOutput]:
    """``prompt_id -> SystemOutput`` for every sample (errors recorded per sample)."""
    outputs: dict[str, SystemOutput] = {}
    todo = []
    for sample in samples:
        why = clips.why_missing(sample)
        if why is not None:
            outputs[prompt_id(sample)] = SystemOutput(system, error=why, tags=tags)
        else:
            todo.append(sample)

    def generate(sample: Sample) -> str:
        request = roleplay_request(
            sample, profiles, clips.of(sample), max_tokens=max_tokens, tags=tags
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
