"""Perceptual-cognitive gain (PCG): how much the model's own perception + think raise the
likelihood of the reference reply under a frozen reference model.

method.md section 2::

    PCG = mean_token log p(y* | x, V, p, t)  -  mean_token log p(y* | x, V)

As the authors condition it (section 6): ``trace_block`` takes the first match of a
perception block, ``<``-free text, then a think block (their ``re.search`` with
non-greedy blocks and DOTALL, in linear time), and keeps the two blocks as written, tags
included, joined by a newline (empty blocks allowed; no match: reward 0). The scorer is
asked for ``y*`` after ``chat-templated prompt + block + "\n"`` (``trace_prefix``) and
after the bare prompt (``BASELINE_PREFIX``), each scored as one tokenized string with
everything before ``y*`` masked (``ebmrl.rewards.likelihood``). The baseline depends on
the prompt only: it is scored once per ``prompt_id`` and cached, and each call sends every
query of the batch (the G traces and the missing baselines) to the scorer together, so
the scorer can batch them.

0 when there is no trace block or the reference is empty, or when the scorer cannot
score a query (NaN: e.g. a sequence over ``max_sequence_tokens``; reported as
``rewards/pcg/unscored_rate``). Optional guards, off in the paper profile: each block's
content cut to ``max_block_chars`` characters (``rewards/pcg/truncation_rate``), and the
``LeakFilter``, which drops think sentences that restate the reference before scoring
(``rewards/pcg/leak_removal_rate`` = dropped / all think sentences of the batch).

The scorer is injected (``LikelihoodScorer``): ``ebmrl.rewards.likelihood`` implements
it over a Hugging Face VLM with real video input. If the scorer's model changes (a
trainer that syncs its reference model), call ``clear_baseline_cache``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ebmrl.rewards.leak import LeakFilter
from ebmrl.rewards.reward_batch import RewardBatch, check_lengths, completion_texts, rate
from ebmrl.tags import DEFAULT_TAGS, ordered_blocks

BASELINE_PREFIX = ""


def trace_block(text: str, tags: Sequence[str] = DEFAULT_TAGS) -> str | None:
    """The perception and think blocks the authors condition on, or None.

    The first match of ``(<p>.*?</p>)[^<]*(<t>.*?</t>)`` (DOTALL) in ``text``, the two
    groups joined by a newline: tags and inner text as written, the gap dropped.
    """
    spans = ordered_blocks(text, (tags[0], tags[1]))
    if spans is None:
        return None
    perception, think = spans
    return f"{text[perception.start : perception.end]}\n{text[think.start : think.end]}"


def trace_prefix(block: str) -> str:
    """The assistant text that conditions ``y*`` when the trace is given."""
    return f"{block}\n"


@dataclass(frozen=True)
class _Trace:
    """A completion's trace block, as two contents to rebuild it from."""

    perception: str
    think: str

    def block(self, tags: Sequence[str]) -> str:
        p, t = tags[0], tags[1]
        return f"<{p}>{self.perception}</{p}>\n<{t}>{self.think}</{t}>"


@dataclass(frozen=True)
class LikelihoodQuery:
    """Score ``target`` after ``prefix`` in the assistant turn of ``prompt`` over a clip.

    ``prompt`` is the conversation (messages whose user turn holds a video block);
    ``clip_id`` names the clip whose frames fill that block.
    """

    prompt: Any
    clip_id: str
    prefix: str
    target: str


class LikelihoodScorer(Protocol):
    """Mean token log-probability of each query's target; NaN for a query it cannot score
    (no target token, or a sequence over its length limit)."""

    def mean_logprob(self, queries: Sequence[LikelihoodQuery]) -> list[float]: ...


@dataclass(frozen=True)
class _Baseline:
    clip_id: str
    target: str
    value: float


class PerceptualCognitiveReward:
    """PCG reward of each completion; baselines cached per ``prompt_id``."""

    name = "pcg"

    def __init__(
        self,
        scorer: LikelihoodScorer,
        leak_filter: LeakFilter | None = None,
        max_block_chars: int | None = 8192,
        max_cached_baselines: int = 100_000,
        tags: Sequence[str] = DEFAULT_TAGS,
    ):
        self.scorer = scorer
        self.leak_filter = leak_filter
        self.max_block_chars = max_block_chars
        self.tags = (str(tags[0]), str(tags[1]))
        self.max_cached_baselines = max_cached_baselines
        self._baselines: dict[str, _Baseline] = {}

    def clear_baseline_cache(self) -> None:
        self._baselines.clear()

    def _cached(self, prompt_id: str, clip_id: str, target: str) -> float | None:
        entry = self._baselines.get(prompt_id)
        if entry is None:
            return None
        if (entry.clip_id, entry.target) != (clip_id, target):
            # A reused prompt_id would silently pair a reply with another sample's baseline.
            raise ValueError(
                f"prompt_id {prompt_id!r} was cached for clip {entry.clip_id!r} with another "
                f"reference; prompt_id must be unique per sample"
            )
        return entry.value

    def _remember(self, prompt_id: str, clip_id: str, target: str, value: float) -> None:
        if len(self._baselines) >= self.max_cached_baselines:
            self._baselines.pop(next(iter(self._baselines)))  # oldest first
        self._baselines[prompt_id] = _Baseline(clip_id, target, value)

    def _traces(self, texts: list[str], refs: list[str]) -> tuple[dict[int, _Trace], int]:
        """Rows to score -> their trace (each block's content cut to ``max_block_chars``
        when set), and how many rows were cut."""
        traces, cut = {}, 0
        limit = self.max_block_chars
        for i, text in enumerate(texts):
            if not refs[i]:
                continue
            spans = ordered_blocks(text, self.tags)
            if spans is None:
                continue
            p, t = (text[s.inner_start : s.inner_end] for s in spans)
            if limit is not None and max(len(p), len(t)) > limit:
                cut += 1
                p, t = p[:limit], t[:limit]
            traces[i] = _Trace(p, t)
        return traces, cut

    def _filter_leaks(self, traces: dict[int, _Trace], refs: list[str]) -> tuple[int, int]:
        """Drop think sentences that restate the reference, in place; (removed, total)."""
        if self.leak_filter is None or not traces:
            return 0, 0
        rows = list(traces)
        filtered = self.leak_filter.filter([traces[i].think for i in rows], [refs[i] for i in rows])
        for i, f in zip(rows, filtered, strict=True):
            traces[i] = _Trace(traces[i].perception, f.text)
        return sum(f.removed for f in filtered), sum(f.total for f in filtered)

    def _baselines_needed(
        self, rows: list[int], prompt_ids: Sequence[str], clip_ids: Sequence[str], refs: list[str]
    ) -> tuple[dict[str, float], dict[str, int]]:
        """(cached baselines by prompt_id, prompt_id -> one row whose baseline is missing)."""
        cached: dict[str, float] = {}
        missing: dict[str, int] = {}
        for i in rows:
            pid = str(prompt_ids[i])
            value = self._cached(pid, clip_ids[i], refs[i])
            if value is not None:
                cached[pid] = value
            elif pid not in missing:
                missing[pid] = i
            elif (clip_ids[missing[pid]], refs[missing[pid]]) != (clip_ids[i], refs[i]):
                raise ValueError(f"prompt_id {pid!r} names two different samples in one batch")
        return cached, missing

    def score(
        self,
        completions: Sequence[object],
        prompts: Sequence[Any],
        clip_ids: Sequence[str],
        references: Sequence[str],
        prompt_ids: Sequence[str],
    ) -> RewardBatch:
        texts = completion_texts(completions)
        n = len(texts)
        check_lengths(
            "pcg",
            n,
            prompts=prompts,
            clip_ids=clip_ids,
            references=references,
            prompt_ids=prompt_ids,
        )
        refs = [str(r or "").strip() for r in references]
        traces, cut = self._traces(texts, refs)
        removed, total = self._filter_leaks(traces, refs)
        baselines, missing = self._baselines_needed(list(traces), prompt_ids, clip_ids, refs)

        # One scorer call for the whole batch: the missing baselines, then every trace.
        queries = [
            LikelihoodQuery(prompts[i], clip_ids[i], BASELINE_PREFIX, refs[i])
            for i in missing.values()
        ]
        queries += [
            LikelihoodQuery(prompts[i], clip_ids[i], trace_prefix(trace.block(self.tags)), refs[i])
            for i, trace in traces.items()
        ]
        scores = self.scorer.mean_logprob(queries) if queries else []
        if len(scores) != len(queries):
            raise ValueError(f"scorer returned {len(scores)} scores for {len(queries)} queries")
        for (pid, i), value in zip(missing.items(), scores, strict=False):
            baselines[pid] = value
            self._remember(pid, clip_ids[i], refs[i], value)

        values = [0.0] * n
        unscored = 0
        for i, with_trace in zip(traces, scores[len(missing) :], strict=True):
            gain = with_trace - baselines[str(prompt_ids[i])]
            values[i] = gain if math.isfinite(gain) else 0.0
            unscored += int(not math.isfinite(gain))
        metrics = {
            "rewards/pcg/missing_rate": rate(n - len(traces), n),
            "rewards/pcg/truncation_rate": rate(cut, len(traces)),
            "rewards/pcg/unscored_rate": rate(unscored, len(traces)),
            "rewards/pcg/baseline_queries": float(len(missing)),
        }
        if self.leak_filter is not None:
            metrics["rewards/pcg/leak_removal_rate"] = rate(removed, total)
        return RewardBatch(values, metrics)
