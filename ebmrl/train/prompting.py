"""Turn a ``Sample`` into the conversation the model sees and the text it should write.

Pure functions: the same prompt is used by SFT, GRPO, evaluation and the PCG reward, so
a change of wording reaches all of them at once.
"""

from __future__ import annotations

from typing import Any

from ebmrl import prompts
from ebmrl.schema import ProfileBook, Sample, history_text


def character_sheet(profiles: ProfileBook | None, name: str, source: str | None) -> str:
    """The sheet of ``name`` that the policy and the judge both see: the profile in the
    sample's film (``source``; none given: whichever film has the name), else a note."""
    profile = (profiles or ProfileBook()).get(name, source)
    return profile.describe() if profile else f"Name: {name}\n(no profile on record)"


def build_prompt(sample: Sample, profiles: ProfileBook | None = None) -> list[dict[str, Any]]:
    """System + user messages; the user turn carries the clip as a ``video`` block."""
    system = prompts.load("roleplay_system").format(
        assistant=sample.assistant, user=sample.user, source=sample.source or "their story"
    )
    user = prompts.load("roleplay_user").format(
        assistant=sample.assistant,
        assistant_profile=character_sheet(profiles, sample.assistant, sample.source),
        user_profile=character_sheet(profiles, sample.user, sample.source),
        history=history_text(sample.dialogue),
    )
    return [
        {"role": "system", "content": [{"type": "text", "text": system.strip()}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user.strip()}]},
    ]


def completion_text(perception: str, think: str, answer: str) -> str:
    """The exact output layout the format reward gives full marks to."""
    return (
        f"<perception>{perception.strip()}</perception>\n"
        f"<think>{think.strip()}</think>\n"
        f"<answer>{answer.strip()}</answer>"
    )


def target_completion(sample: Sample) -> str | None:
    """Reference perception + think + reply, or None when the sample has no trace."""
    if not sample.has_trace:
        return None
    return completion_text(sample.perception or "", sample.think or "", sample.target.utterance)


def prompt_id(sample: Sample) -> str:
    return f"{sample.session_id}:{sample.sample_id}"


def grpo_row(sample: Sample, profiles: ProfileBook | None = None) -> dict[str, Any]:
    """One GRPO dataset row: the columns reward functions receive (see ebmrl.rewards)."""
    if not sample.clip_id:
        raise ValueError(f"sample {prompt_id(sample)} has no clip_id (run ingest first)")
    return {
        "prompt": build_prompt(sample, profiles),
        "clip_id": sample.clip_id,
        "reference": sample.target.utterance,
        "prompt_id": prompt_id(sample),
    }


def sft_row(sample: Sample, profiles: ProfileBook | None = None) -> dict[str, Any] | None:
    """Prompt + assistant completion, or None for samples without a reference trace."""
    completion = target_completion(sample)
    if completion is None:
        return None
    if not sample.clip_id:
        raise ValueError(f"sample {prompt_id(sample)} has no clip_id (run ingest first)")
    return {
        "prompt": build_prompt(sample, profiles),
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": completion}]}],
        "clip_id": sample.clip_id,
        "prompt_id": prompt_id(sample),
    }
