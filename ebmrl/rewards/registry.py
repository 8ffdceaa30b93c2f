"""Every reward by name: the four built-in ones and the functions params.yaml names.

A reward function, built-in or yours, has one shape::

    def brevity(completions, *, reference):          # keyword-only: dataset columns
        return [1.0 / (1 + len(c)) for c in completions]  # one float (or None) each

Positional: the completions (strings or chat messages: ``ebmrl.tags.as_text`` reads
both). Keyword-only: the columns it needs, named like the GRPO dataset's columns
(``clip_id``, ``reference``, ``prompt_id``, ``problem_type``, ...), each repeated once per
completion, plus ``prompts`` when it needs the conversation. It returns one value per
completion, or a ``RewardBatch`` to report diagnostics too (logged as
``rewards/<name>/<metric>``). ``trl_adapter.trl_reward`` turns it into a TRL reward
function.

Adding one takes a function and two lines of params.yaml::

    rewards:
      functions: {brevity: my_rewards:brevity}
      weights: {..., brevity: 0.5}

The built-in rewards need models (CLIP, BERTScore, the PCG scorer); their factories take
them from ``RewardModels``, and only rewards with a non-zero weight are built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ebmrl.config import BUILTIN_REWARDS, RewardsSection, import_callable
from ebmrl.frame_store import FrameStore
from ebmrl.rewards.answer import AnswerReward, F1Scorer
from ebmrl.rewards.clip import ClipReward, ClipTextEncoder
from ebmrl.rewards.format import FormatReward
from ebmrl.rewards.leak import Embed, LeakFilter
from ebmrl.rewards.pcg import LikelihoodScorer, PerceptualCognitiveReward
from ebmrl.rewards.reward_batch import RewardBatch
from ebmrl.tags import TagNames

RewardFunction = Callable[..., "Sequence[float | None] | RewardBatch"]


@dataclass(frozen=True)
class RewardModels:
    """The models the built-in rewards are scored with, injected (None: not loaded)."""

    clip_encoder: ClipTextEncoder | None = None
    frame_store: FrameStore | None = None
    answer_scorer: F1Scorer | None = None
    pcg_scorer: LikelihoodScorer | None = None
    sentence_embedder: Embed | None = None

    def require(self, field: str, what: str, reward: str) -> Any:
        value = getattr(self, field)
        if value is None:
            raise ValueError(
                f"rewards.weights.{reward} is not 0, so the {reward} reward needs {what}; "
                f"pass it, or set the weight to 0 to switch the reward off"
            )
        return value


Factory = Callable[[RewardsSection, TagNames, RewardModels], RewardFunction]


def format_reward(section: RewardsSection, tags: TagNames, models: RewardModels):
    reward = FormatReward(tags)

    def format(completions):
        """Dense format reward of each completion (no column needed)."""
        return reward.score(completions)

    return format


def answer_reward(section: RewardsSection, tags: TagNames, models: RewardModels):
    scorer = models.require("answer_scorer", "answer_scorer (a BERTScorer)", "answer")
    reward = AnswerReward(scorer, section.answer.batch_size, answer_tag=tags.answer)

    def answer(completions, *, reference, problem_type=None):
        """BERTScore F1 of each answer block against the ``reference`` column."""
        return reward.score(completions, reference, problem_type)

    return answer


def clip_reward(section: RewardsSection, tags: TagNames, models: RewardModels):
    encoder = models.require("clip_encoder", "clip_encoder", "clip")
    frames = models.require("frame_store", "frame_store", "clip")
    clip_section = section.clip
    reward = ClipReward(
        encoder,
        frames,
        mode=clip_section.mode,
        topk_fraction=clip_section.topk_fraction,
        max_sentences=clip_section.max_sentences,
        sentence_rule=clip_section.sentence_rule,
        perception_tag=tags.perception,
    )

    def clip(completions, *, clip_id):
        """CLIP alignment of each perception block with the frames of ``clip_id``."""
        return reward.score(completions, clip_id)

    return clip


def pcg_reward(section: RewardsSection, tags: TagNames, models: RewardModels):
    scorer = models.require("pcg_scorer", "pcg_scorer", "pcg")
    leak = None
    if section.pcg.leak_filter.enabled:
        embedder = models.require(
            "sentence_embedder", "sentence_embedder (leak filter enabled)", "pcg"
        )
        leak = LeakFilter(embedder, section.pcg.leak_filter.threshold)
    reward = PerceptualCognitiveReward(
        scorer, leak_filter=leak, max_block_chars=section.pcg.max_block_chars, tags=tags
    )

    def pcg(completions, *, prompts, clip_id, reference, prompt_id):
        """Likelihood gain of ``reference`` from each completion's perception + think."""
        return reward.score(completions, prompts, clip_id, reference, prompt_id)

    return pcg


BUILTIN: dict[str, Factory] = {
    "format": format_reward,
    "answer": answer_reward,
    "clip": clip_reward,
    "pcg": pcg_reward,
}
assert tuple(BUILTIN) == BUILTIN_REWARDS  # config.py validates weights against this list


def reward_functions(
    section: RewardsSection, tags: TagNames, models: RewardModels
) -> dict[str, RewardFunction]:
    """The reward functions with a non-zero weight, by name, in TRL's order (the
    built-in ones, then ``section.functions`` as written)."""
    out: dict[str, RewardFunction] = {}
    for name, factory in BUILTIN.items():
        if section.weights[name]:
            out[name] = factory(section, tags, models)
    for name, path in section.functions.items():
        if section.weights[name]:
            out[name] = import_callable(path)  # params.yaml validated the path
    return out
