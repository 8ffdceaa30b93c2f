"""The four EBM-RL rewards and their aggregation (method.md section 2).

Each reward is usable without TRL: plain lists in, a ``RewardBatch`` (one float per
completion + diagnostics) out, expensive state injected.

- ``format.format_score`` / ``FormatReward``: dense format reward, [-5, 5].
- ``answer.AnswerReward``: BERTScore F1 of ``<answer>`` vs the reference, [0, 1].
- ``clip.ClipReward``: CLIP alignment of ``<perception>`` with the clip's stored frames.
- ``pcg.PerceptualCognitiveReward``: likelihood gain of the reference from the trace,
  scored by ``likelihood.VideoLikelihoodScorer`` (or any ``LikelihoodScorer``).
- ``aggregate.combine``: group-relative advantages (normalize_then_sum / sum_then_normalize).
- ``registry``: every reward by name (built-in and params.yaml ``rewards.functions``).
- ``trl_adapter.build_reward_funcs``: the rewards as TRL reward functions + GRPOConfig args.
"""

from ebmrl.rewards.aggregate import combine
from ebmrl.rewards.answer import AnswerReward
from ebmrl.rewards.clip import ClipReward, max_frame_similarity, sentence_topk_similarity
from ebmrl.rewards.format import FormatReward, format_score
from ebmrl.rewards.pcg import PerceptualCognitiveReward
from ebmrl.rewards.reward_batch import RewardBatch

__all__ = [
    "AnswerReward",
    "ClipReward",
    "FormatReward",
    "PerceptualCognitiveReward",
    "RewardBatch",
    "combine",
    "format_score",
    "max_frame_similarity",
    "sentence_topk_similarity",
]
