"""Turn a ``Sample`` into the conversation the model sees and the text it should write.

Pure functions: the same prompt is used by SFT, GRPO, evaluation and the PCG reward, so
a change of wording reaches all of them at once. ``tags`` (params.yaml ``tags``) names
the three blocks in the prompt and in the SFT targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from ebmrl import prompts
from ebmrl.schema import ProfileBook, Sample, SchemaError, history_text
from ebmrl.tags import DEFAULT_TAGS, first_block, tag_names

# SFT target layouts: "tagged" (ours) rebuilds perception, think and reply stripped, one
# block per line; "released" is the authors': the released `process` text, a blank line,
# then the `solution` text, exactly as written.
TargetLayout = Literal["tagged", "released"]
# The training prompt's output format and closing request (prompt templates): the three
# blocks. The evaluation's baselines pass their own (ebmrl.eval.generation.PROMPT_MODES).
TRAINING_TEMPLATES = ("roleplay_format_ebm", "roleplay_request_ebm")


def character_sheet(profiles: ProfileBook | None, name: str, source: str | None) -> str:
    """The sheet of ``name`` that the policy and the judge both see: the profile in the
    sample's film (``source``; none given: whichever film has the name), else a note."""
    profile = (profiles or ProfileBook()).get(name, source)
    return profile.describe() if profile else f"Name: {name}\n(no profile on record)"


def build_prompt(
    sample: Sample,
    profiles: ProfileBook | None = None,
    tags: Sequence[str] = DEFAULT_TAGS,
    templates: tuple[str, str] = TRAINING_TEMPLATES,
) -> list[dict[str, Any]]:
    """System + user messages; the user turn carries the clip as a ``video`` block.

    ``templates`` names the output format and the closing request: the three blocks by
    default (what training uses); the evaluation's baselines ask for other formats with
    the same scene rules and answer rule."""
    format_template, request_template = templates
    names = tag_names(tags)
    people = {
        "assistant": sample.assistant,
        "user": sample.user,
        "source": sample.source or "their story",
    }
    answer_rule = prompts.load("roleplay_answer").strip().format(**people)
    output_format = (
        prompts.load(format_template).strip().format(answer_rule=answer_rule, **names._asdict())
    )
    system = prompts.load("roleplay_system").format(output_format=output_format, **people)
    user = prompts.load("roleplay_user").format(
        assistant=sample.assistant,
        assistant_profile=character_sheet(profiles, sample.assistant, sample.source),
        user_profile=character_sheet(profiles, sample.user, sample.source),
        history=history_text(sample.dialogue),
        request=prompts.load(request_template).strip().format(**people),
    )
    return [
        {"role": "system", "content": [{"type": "text", "text": system.strip()}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user.strip()}]},
    ]


def completion_text(
    perception: str, think: str, answer: str, tags: Sequence[str] = DEFAULT_TAGS
) -> str:
    """The exact output layout the format reward gives full marks to."""
    p, t, a = tag_names(tags)
    return (
        f"<{p}>{perception.strip()}</{p}>\n<{t}>{think.strip()}</{t}>\n<{a}>{answer.strip()}</{a}>"
    )


def released_target(sample: Sample, tags: Sequence[str] = DEFAULT_TAGS) -> str:
    """The authors' SFT target: ``process``, a blank line, ``solution``, as written.

    A sample without ``solution`` gets its reply in the answer tag. A ``process`` whose
    blocks are not in the tags in use is a ``SchemaError`` (training on it would teach
    other tags than the rewards count; the stages exit 2 naming the sample and the key).
    """
    names = tag_names(tags)
    process = sample.process or ""
    if first_block(process, names.perception) is None or first_block(process, names.think) is None:
        raise SchemaError(
            f"sample {prompt_id(sample)}: its process text has no <{names.perception}> and "
            f"<{names.think}> blocks, the tags in use (params.yaml tags: {list(names)}); "
            "set tags to the data's, or use sft.target_layout: tagged"
        )
    solution = sample.solution
    if solution is None:
        solution = f"<{names.answer}>{sample.target.utterance}</{names.answer}>"
    return f"{process}\n\n{solution}"


def target_completion(
    sample: Sample, tags: Sequence[str] = DEFAULT_TAGS, layout: TargetLayout = "tagged"
) -> str | None:
    """Reference perception + think + reply, or None when the sample has no trace."""
    if not sample.has_trace:
        return None
    if layout == "released":
        return released_target(sample, tags)
    return completion_text(
        sample.perception or "", sample.think or "", sample.target.utterance, tags
    )


def prompt_id(sample: Sample) -> str:
    return f"{sample.session_id}:{sample.sample_id}"


def reference_reply(sample: Sample, tags: Sequence[str] = DEFAULT_TAGS) -> str:
    """The reply the rewards compare with, read as the authors read it: the answer block
    of ``solution`` (first opener to first closer, stripped; none: empty, which scores 0),
    or ``target.utterance`` for a sample without ``solution``."""
    if sample.solution is None:
        return sample.target.utterance.strip()
    return (first_block(sample.solution, tag_names(tags).answer) or "").strip()


def grpo_row(
    sample: Sample, profiles: ProfileBook | None = None, tags: Sequence[str] = DEFAULT_TAGS
) -> dict[str, Any]:
    """One GRPO dataset row: the columns reward functions receive (see ebmrl.rewards)."""
    if not sample.clip_id:
        raise SchemaError(f"sample {prompt_id(sample)} has no clip_id (run ingest first)")
    return {
        "prompt": build_prompt(sample, profiles, tags),
        "clip_id": sample.clip_id,
        "reference": reference_reply(sample, tags),
        "prompt_id": prompt_id(sample),
        "problem_type": sample.problem_type or "free-form",
    }


def sft_row(
    sample: Sample,
    profiles: ProfileBook | None = None,
    tags: Sequence[str] = DEFAULT_TAGS,
    layout: TargetLayout = "tagged",
) -> dict[str, Any] | None:
    """Prompt + assistant completion, or None for samples without a reference trace."""
    completion = target_completion(sample, tags, layout)
    if completion is None:
        return None
    if not sample.clip_id:
        raise SchemaError(f"sample {prompt_id(sample)} has no clip_id (run ingest first)")
    return {
        "prompt": build_prompt(sample, profiles, tags),
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": completion}]}],
        "clip_id": sample.clip_id,
        "prompt_id": prompt_id(sample),
    }
