"""The four rewards as TRL reward functions, with weights and aggregation from params.yaml.

TRL 1.16 calls each reward function as::

    f(prompts=..., completions=..., completion_ids=..., **columns,
      trainer_state=..., log_extra=..., log_metric=...)

with every dataset column repeated once per completion (G rows per prompt), and expects
one float (or None) per completion. It logs ``rewards/<f.__name__>/mean|std``, so the
functions here are named ``format``, ``answer``, ``clip`` and ``pcg``, and each forwards
its reward's diagnostics (truncation, missing-block and leak-filter rates) through
``log_metric``.

Columns read (the team's GRPO dataset contract): ``clip_id`` (clip, CLIP and PCG),
``reference`` (answer, PCG), ``prompt_id`` (PCG baseline cache), optionally
``problem_type`` (answer: only free-form rows are scored); the conversation itself
arrives as ``prompts``. Tag names come from params.yaml ``tags``.

``build_reward_funcs(params, ...)`` returns the functions of the rewards whose weight is
not 0 (a zero-weight reward is not computed, so its model need not be loaded), their
weights, and the ``GRPOConfig`` arguments (``reward_weights``,
``multi_objective_aggregation``, ``scale_rewards``). ``trl_advantages`` is
``ebmrl.rewards.aggregate.combine`` with TRL's constants: it reproduces the advantages
TRL computes from the same rewards (tested against a real GRPOTrainer step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ebmrl.config import Params
from ebmrl.frame_store import FrameStore
from ebmrl.rewards.aggregate import Aggregation, combine
from ebmrl.rewards.answer import AnswerReward, F1Scorer
from ebmrl.rewards.base import RewardBatch
from ebmrl.rewards.clip import ClipReward, ClipTextEncoder
from ebmrl.rewards.format import FormatReward
from ebmrl.rewards.leak import Embed, LeakFilter
from ebmrl.rewards.pcg import LikelihoodScorer, PerceptualCognitiveReward

REWARD_NAMES: tuple[str, ...] = ("format", "answer", "clip", "pcg")
# TRL 1.16: the epsilon under every standard deviation in GRPOTrainer's advantages.
TRL_EPS = 1e-4

RewardFunc = Callable[..., list[float]]
LogMetric = Callable[[str, float], None]


def _report(batch: RewardBatch, log_metric: LogMetric | None) -> list[float]:
    if log_metric is not None:
        for name, value in batch.metrics.items():
            log_metric(name, value)
    return batch.values


def format_reward_func(reward: FormatReward | None = None) -> RewardFunc:
    reward = reward or FormatReward()

    def format(  # the name TRL logs: rewards/format/mean
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Any] | None = None,
        log_metric: LogMetric | None = None,
        **_: Any,
    ) -> list[float]:
        """Dense format reward of each completion (no column needed)."""
        return _report(reward.score(completions), log_metric)

    return format


def answer_reward_func(reward: AnswerReward) -> RewardFunc:
    def answer(
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Any] | None = None,
        *,
        reference: Sequence[str],
        problem_type: Sequence[str | None] | None = None,
        log_metric: LogMetric | None = None,
        **_: Any,
    ) -> list[float]:
        """BERTScore F1 of each ``<answer>`` against the ``reference`` column."""
        return _report(reward.score(completions, reference, problem_type), log_metric)

    return answer


def clip_reward_func(reward: ClipReward) -> RewardFunc:
    def clip(
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Any] | None = None,
        *,
        clip_id: Sequence[str],
        log_metric: LogMetric | None = None,
        **_: Any,
    ) -> list[float]:
        """CLIP alignment of each ``<perception>`` with the frames of the ``clip_id`` column."""
        return _report(reward.score(completions, clip_id), log_metric)

    return clip


def pcg_reward_func(reward: PerceptualCognitiveReward) -> RewardFunc:
    def pcg(
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Any] | None = None,
        *,
        clip_id: Sequence[str],
        reference: Sequence[str],
        prompt_id: Sequence[str],
        log_metric: LogMetric | None = None,
        **_: Any,
    ) -> list[float]:
        """Likelihood gain of ``reference`` from each completion's perception + think."""
        batch = reward.score(completions, prompts, clip_id, reference, prompt_id)
        return _report(batch, log_metric)

    return pcg


@dataclass(frozen=True)
class RewardSetup:
    """What a GRPO trainer needs: the functions, their weights, the aggregation mode."""

    funcs: list[RewardFunc]
    weights: list[float]
    aggregation: Aggregation

    @property
    def names(self) -> list[str]:
        return [f.__name__ for f in self.funcs]

    def grpo_config_kwargs(self) -> dict[str, Any]:
        """Arguments for ``trl.GRPOConfig``: the weights (TRL logs the weighted ``reward``
        with them). The aggregation goes to ``VideoGRPOTrainer(aggregation=...)``."""
        return {"reward_weights": list(self.weights)}


def _require(dependency: object, what: str, reward: str) -> None:
    if dependency is None:
        raise ValueError(
            f"rewards.weights.{reward} is not 0, so the {reward} reward needs {what}; "
            f"pass it, or set the weight to 0 to switch the reward off"
        )


def build_reward_funcs(
    params: Params,
    *,
    clip_encoder: ClipTextEncoder | None = None,
    frame_store: FrameStore | None = None,
    answer_scorer: F1Scorer | None = None,
    pcg_scorer: LikelihoodScorer | None = None,
    sentence_embedder: Embed | None = None,
) -> RewardSetup:
    """TRL reward functions for every reward with a non-zero weight in ``params.rewards``.

    Dependencies are injected: ``clip_encoder`` + ``frame_store`` (CLIP),
    ``answer_scorer`` (a BERTScorer, ``make_bert_scorer``), ``pcg_scorer`` (e.g.
    ``VideoLikelihoodScorer`` over the trainer's reference model) and, when
    ``rewards.pcg.leak_filter.enabled``, ``sentence_embedder``.
    """
    section = params.rewards
    tags = params.tag_names()
    weights = section.weights.model_dump()
    funcs: list[RewardFunc] = []
    for name in REWARD_NAMES:
        if weights[name] == 0:
            continue
        if name == "format":
            funcs.append(format_reward_func(FormatReward(tags)))
        elif name == "answer":
            _require(answer_scorer, "answer_scorer (a BERTScorer)", name)
            reward = AnswerReward(answer_scorer, section.answer.batch_size, answer_tag=tags.answer)
            funcs.append(answer_reward_func(reward))
        elif name == "clip":
            _require(clip_encoder, "clip_encoder", name)
            _require(frame_store, "frame_store", name)
            reward = ClipReward(
                clip_encoder,
                frame_store,
                mode=section.clip.mode,
                topk_fraction=section.clip.topk_fraction,
                max_sentences=section.clip.max_sentences,
                sentence_rule=section.clip.sentence_rule,
                perception_tag=tags.perception,
            )
            funcs.append(clip_reward_func(reward))
        else:
            _require(pcg_scorer, "pcg_scorer", name)
            leak = None
            if section.pcg.leak_filter.enabled:
                _require(sentence_embedder, "sentence_embedder (leak filter enabled)", name)
                leak = LeakFilter(sentence_embedder, section.pcg.leak_filter.threshold)
            reward = PerceptualCognitiveReward(
                pcg_scorer,
                leak_filter=leak,
                max_block_chars=section.pcg.max_block_chars,
                tags=tags,
            )
            funcs.append(pcg_reward_func(reward))
    return RewardSetup(
        funcs=funcs,
        weights=[weights[f.__name__] for f in funcs],
        aggregation=section.aggregation,
    )


def trl_advantages(
    rewards: Mapping[str, Sequence[float | None]],
    weights: Mapping[str, float],
    group_size: int,
    mode: Aggregation = "normalize_then_sum",
) -> list[float]:
    """The advantages TRL 1.16's GRPOTrainer computes (``scale_rewards="group"``)."""
    return combine(
        rewards,
        weights,
        group_size,
        mode,
        eps=TRL_EPS,
        batch_normalize=mode == "normalize_then_sum",
    )
