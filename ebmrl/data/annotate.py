"""Annotate: a VLM writes the visual description of each clip from its stored frames.

Each request is keyed by (clip content hash, prompt hash, model id) in an append-only
cache: a finished description is written the moment it arrives, so a crash loses only
the requests in flight, and a rerun asks only for the clips still missing. The prompt
hash covers the template wording and every setting that shapes the reply (frames sent,
max tokens, temperature, top-p, seed).
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
from ebmrl.frame_store import FrameStore
from ebmrl.schema import Clip
from ebmrl.video import spread_frames

SYSTEM_PROMPT = "annotate_system"
USER_PROMPT = "annotate_user"


@dataclass(frozen=True)
class AnnotateSettings:
    max_frames: int = 8
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    max_words: int = 150

    def prompt_hash(self) -> str:
        payload = {
            "system": prompts.load(SYSTEM_PROMPT),
            "user": prompts.load(USER_PROMPT),
            "settings": self.__dict__,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def clip_seed(settings: AnnotateSettings, sha256: str) -> int:
    """A per-clip seed: sampling differs across clips yet repeats exactly on a rerun."""
    return (settings.seed * 1_000_003 + int(sha256[:8], 16)) % (2**31)


def annotation_request(frames: np.ndarray, settings: AnnotateSettings, sha256: str) -> ChatRequest:
    user = prompts.load(USER_PROMPT).format(num_frames=len(frames), max_words=settings.max_words)
    return ChatRequest(
        messages=(
            Message("system", prompts.load(SYSTEM_PROMPT).strip()),
            Message("user", user.strip()),
        ),
        frames=frames,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=clip_seed(settings, sha256),
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
    settings: AnnotateSettings,
    *,
    concurrency: int = 4,
    progress: bool = False,
) -> AnnotateResult:
    """One description per clip (cached ones are not requested again)."""
    started = time.perf_counter()
    prompt_hash = settings.prompt_hash()
    model_id = client.backend.model_id

    def key_of(clip: Clip) -> str:
        return cache_key(str(clip.sha256), prompt_hash, model_id)

    todo = [c for c in clips if client.cached(key_of(c)) is None]

    def describe(clip: Clip) -> str:
        frames = spread_frames(store.frames(clip.clip_id), settings.max_frames)
        request = annotation_request(frames, settings, str(clip.sha256))
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
                "prompt_hash": prompt_hash,
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
