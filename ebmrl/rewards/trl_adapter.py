"""Reward functions as TRL reward functions, with weights and aggregation from params.yaml.

TRL 1.16 calls each reward function as::

    f(prompts=..., completions=..., completion_ids=..., **columns,
      trainer_state=..., log_extra=..., log_metric=...)

with every dataset column repeated once per completion (G rows per prompt), and expects
one float (or None) per completion. It logs ``rewards/<f.__name__>/mean|std``.

``trl_reward(name, function)`` is the one adapter: it names the TRL function after the
reward, hands the reward function the completions and the keyword-only columns it
declares (an absent column is an error naming it), and forwards a ``RewardBatch``'s
diagnostics through ``log_metric``. Reward functions and their shape:
``ebmrl.rewards.registry``.

Columns the built-in rewards read (the team's GRPO dataset contract): ``clip_id`` (CLIP
and PCG), ``reference`` (answer, PCG), ``prompt_id`` (PCG baseline cache), optionally
``problem_type`` (answer: only free-form rows are scored); the conversation itself
arrives as ``prompts``.

``build_reward_funcs(section, tags, models)`` returns the TRL functions of the rewards
whose weight is not 0 (a zero-weight reward is not computed, so its model need not be
loaded), their weights and the aggregation. ``trl_advantages`` is
``ebmrl.rewards.aggregate.combine`` with TRL's constants: it reproduces the advantages
TRL computes from the same rewards (tested against a real GRPOTrainer step).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ebmrl.config import RewardsSection
from ebmrl.rewards.aggregate import Aggregation, combine
from ebmrl.rewards.registry import RewardFunction, RewardModels, reward_functions
from ebmrl.rewards.reward_batch import RewardBatch
from ebmrl.tags import DEFAULT_TAGS, TagNames

# TRL 1.16: the epsilon under every standard deviation in GRPOTrainer's advantages.
TRL_EPS = 1e-4

RewardFunc = Callable[..., list[float]]
LogMetric = Callable[[str, float], None]


def _keyword_columns(function: RewardFunction) -> dict[str, bool]:
    """The keyword-only parameters of a reward function -> whether each is required."""
    return {
        name: parameter.default is inspect.Parameter.empty
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


def trl_reward(name: str, function: RewardFunction) -> RewardFunc:
    """``function`` as a TRL reward function named ``name`` (TRL logs rewards/<name>/*)."""
    columns = _keyword_columns(function)

    def reward(completions: Sequence[Any], log_metric: LogMetric | None = None, **kwargs: Any):
        passed = {}
        for column, required in columns.items():
            if column in kwargs:
                passed[column] = kwargs[column]
            elif required:
                raise ValueError(
                    f"the {name} reward needs the dataset column {column!r}, which this "
                    f"batch does not have (columns: {', '.join(sorted(kwargs)) or 'none'})"
                )
        result = function(completions, **passed)
        if isinstance(result, RewardBatch):
            if log_metric is not None:
                for metric, value in result.metrics.items():
                    log_metric(metric, value)
            result = result.values
        values = list(result)
        if len(values) != len(completions):
            raise ValueError(
                f"the {name} reward returned {len(values)} values for "
                f"{len(completions)} completions"
            )
        return values

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = function.__doc__
    return reward


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


def build_reward_funcs(
    section: RewardsSection,
    tags: TagNames = DEFAULT_TAGS,
    models: RewardModels | None = None,
) -> RewardSetup:
    """TRL reward functions for every reward with a non-zero weight in ``section``
    (params.yaml ``rewards``), reading the blocks named by ``tags``.

    The built-in rewards' models come in ``models``: ``clip_encoder`` + ``frame_store``
    (CLIP), ``answer_scorer`` (a BERTScorer, ``make_bert_scorer``), ``pcg_scorer`` (e.g.
    ``VideoLikelihoodScorer`` over the trainer's reference model) and, when
    ``rewards.pcg.leak_filter.enabled``, ``sentence_embedder``.
    """
    functions = reward_functions(section, tags, models or RewardModels())
    return RewardSetup(
        funcs=[trl_reward(name, function) for name, function in functions.items()],
        weights=[section.weights[name] for name in functions],
        aggregation=section.aggregation,
    )


def format_reward_func(tags: TagNames = DEFAULT_TAGS) -> RewardFunc:
    """The format reward alone, as a TRL reward function (no model needed)."""
    from ebmrl.rewards.registry import format_reward

    return trl_reward("format", format_reward(RewardsSection(), tags, RewardModels()))


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
