"""Annotate: a VLM writes the visual description of each clip from its stored frames.

Each request is keyed by (clip content hash, prompt hash, model id) in an append-only
cache: a finished description is written the moment it arrives, so a crash loses only
the requests in flight, and a rerun asks only for the clips still missing. The prompt
hash covers the template wording and every setting that shapes the reply (frames sent,
max tokens, temperature, top-p, seed, asked-for length). Every setting comes from the
``annotate`` section of params.yaml (``AnnotateSection`` and its ``generation``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ebmrl import prompts
from ebmrl.backends import ChatRequest, GenerationClient, Message, cache_key, map_concurrent
from ebmrl.config import AnnotateSection
from ebmrl.frame_store import FrameStore
from ebmrl.schema import Clip
from ebmrl.video import spread_frames

SYSTEM_PROMPT = "annotate_system"
USER_PROMPT = "annotate_user"


def prompt_hash(section: AnnotateSection) -> str:
    """The templates and every setting that shapes a description, hashed (a cache key part
    and the report's ``prompt_hash``: the payload's keys and values must not change, or
    every cached description is asked for again)."""
    generation = section.generation
    settings = {
        "max_frames": section.max_frames,
        "max_tokens": generation.max_tokens,
        "temperature": generation.temperature,
        "top_p": generation.top_p,
        "seed": generation.seed,
        "max_words": section.max_words,
    }
    payload = {
        "system": prompts.load(SYSTEM_PROMPT),
        "user": prompts.load(USER_PROMPT),
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def clip_seed(seed: int, sha256: str) -> int:
    """A per-clip seed from ``generation.seed``: sampling differs across clips yet repeats
    exactly on a rerun."""
    return (seed * 1_000_003 + int(sha256[:8], 16)) % (2**31)


def annotation_request(frames: np.ndarray, section: AnnotateSection, sha256: str) -> ChatRequest:
    user = prompts.load(USER_PROMPT).format(num_frames=len(frames), max_words=section.max_words)
    generation = section.generation
    return ChatRequest(
        messages=(
            Message("system", prompts.load(SYSTEM_PROMPT).strip()),
            Message("user", user.strip()),
        ),
        frames=frames,
        max_tokens=generation.max_tokens,
        temperature=generation.temperature,
        top_p=generation.top_p,
        seed=clip_seed(generation.seed, sha256),
    )


def clean_description(text: str) -> str:
    """One paragraph: whitespace collapsed, control characters removed."""
    return " ".join("".join(ch for ch in text if ch.isprintable() or ch.isspace()).split())


@dataclass
class AnnotateResult:
    annotations: list[dict[str, Any]]
    failures: list[dict[str, str]]
    stats: dict[str, Any] = field(default_factory=dict)


def annotate_clips(
    clips: Sequence[Clip],
    store: FrameStore,
    client: GenerationClient,
    section: AnnotateSection,
    *,
    concurrency: int = 4,
    progress: bool = False,
) -> AnnotateResult:
    """One description per clip (cached ones are not requested again), asked for as
    ``section`` says (``max_frames``, ``max_words``, ``generation``)."""
    started = time.perf_counter()
    hashed = prompt_hash(section)
    model_id = client.backend.model_id

    def key_of(clip: Clip) -> str:
        return cache_key(str(clip.sha256), hashed, model_id)

    todo = [c for c in clips if client.cached(key_of(c)) is None]

    def describe(clip: Clip) -> str:
        frames = spread_frames(store.frames(clip.clip_id), section.max_frames)
        request = annotation_request(frames, section, str(clip.sha256))
        return client.generate(request, key=key_of(clip), clip_id=clip.clip_id, sha256=clip.sha256)

    outcomes = map_concurrent(
        describe, todo, concurrency=concurrency, desc="annotate", progress=progress
    )
    failures = [
        {
            "clip_id": o.item.clip_id,
            "uri": o.item.uri,
            "error": f"{type(o.error).__name__}: {o.error}",
            # A backend that was down or overloaded (after the retries): worth a later rerun.
            "retryable": bool(getattr(o.error, "retryable", False)),
        }
        for o in outcomes
        if o.error is not None
    ]
    annotations = []
    for clip in clips:
        hit = client.cached(key_of(clip))
        if hit is None:
            continue
        annotations.append(
            {
                "clip_id": clip.clip_id,
                "sha256": clip.sha256,
                "description": clean_description(hit["text"]),
                "model_id": model_id,
                "prompt_hash": hashed,
            }
        )
    stats = {
        "clips": len(clips),
        "cached_before": len(clips) - len(todo),
        "requested": len(todo),
        "failed": len(failures),
        "empty_descriptions": sum(not a["description"] for a in annotations),
        "seconds": round(time.perf_counter() - started, 3),
        "client": client.stats.as_dict(),
    }
    return AnnotateResult(annotations, failures, stats)
