"""Put the evaluation together: judge every sample, then summarize per system.

Inputs are plain data (samples, each system's outputs, judge contexts); the judge and the
metric scorers are injected. Results are per sample (for the report) and per system (for
``metrics/eval.json``). A sample that cannot be scored keeps its reason in
``not_scored``; our summaries count it (``coverage``) and never turn it into a number.
With the authors' protocol the summaries also carry the authors' figures (``authors``):
a candidate whose score could not be read counts as 0 there, and a pairwise verdict
kept from the first order counts as an outcome.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ebmrl.backends import map_concurrent
from ebmrl.eval.judge import METRICS, Judge, JudgeContext, Judgement, Verdict
from ebmrl.eval.outputs import SystemOutput
from ebmrl.eval.pairwise import PairTally, combine_orders, position_flip


def pair_name(first: str, second: str) -> str:
    return f"{first}_vs_{second}"


@dataclass
class PairResult:
    """X vs Y on one metric for one sample: the verdict in each order and X's outcome."""

    first: Verdict  # X shown as [A]
    second: Verdict  # Y shown as [A]

    @property
    def outcome(self) -> str | None:
        if self.first.winner is None or self.second.winner is None:
            return None
        return combine_orders(self.first.winner, self.second.winner)

    @property
    def error(self) -> str | None:
        return self.first.error or self.second.error

    @property
    def confidences(self) -> tuple[str | None, ...]:
        return (self.first.confidence, self.second.confidence)

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "first": self.first.winner,
            "second": self.second.winner,
            "first_order_only": self.first.winner is not None and self.second.winner is None,
            "confidence": [self.first.confidence, self.second.confidence],
            "position_flip": bool(
                self.outcome is not None and position_flip(self.first.winner, self.second.winner)
            ),
            "error": self.error,
        }


@dataclass
class SampleJudgements:
    listwise: dict[str, Judgement] = field(default_factory=dict)  # metric -> judgement
    pairwise: dict[str, dict[str, PairResult]] = field(default_factory=dict)  # pair -> metric


def judge_samples(
    judge: Judge,
    contexts: Mapping[str, JudgeContext],
    outputs: Mapping[str, Sequence[SystemOutput]],
    *,
    metrics: Sequence[str],
    pairs: Sequence[tuple[str, str]] = (),
    concurrency: int = 1,
    progress: bool = False,
) -> dict[str, SampleJudgements]:
    """Listwise judgements of every sample on every metric, and each pair in both orders."""
    tasks: list[tuple] = []
    for key in contexts:
        by_system = {o.system: o for o in outputs[key]}
        for metric in metrics:
            tasks.append(("listwise", key, metric, None))
            for x, y in pairs:
                tasks.append(("verdict", key, metric, (by_system[x], by_system[y])))
                tasks.append(("verdict", key, metric, (by_system[y], by_system[x])))

    def run(task: tuple):
        kind, key, metric, pair = task
        if kind == "listwise":
            return judge.listwise(contexts[key], METRICS[metric], outputs[key])
        return judge.verdict(contexts[key], METRICS[metric], *pair)

    results = {key: SampleJudgements() for key in contexts}
    done = map_concurrent(run, tasks, concurrency=concurrency, desc="judge", progress=progress)
    verdicts: dict[tuple, Verdict] = {}
    for outcome in done:
        kind, key, metric, pair = outcome.item
        if outcome.error is not None:  # a bug, not a judge failure: keep it visible
            raise outcome.error
        if kind == "listwise":
            results[key].listwise[metric] = outcome.result
        else:
            verdicts[(key, metric, pair[0].system, pair[1].system)] = outcome.result
    for key in contexts:
        for x, y in pairs:
            per_metric = results[key].pairwise.setdefault(pair_name(x, y), {})
            for metric in metrics:
                per_metric[metric] = PairResult(
                    verdicts[(key, metric, x, y)], verdicts[(key, metric, y, x)]
                )
    return results


# ----------------------------------------------------------------------- summaries
def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _headline(entry: Mapping[str, Any], metrics: Sequence[str]) -> float | None:
    """The method's headline: the mean of the metrics (only when every one has a value)."""
    means = [entry[m] for m in metrics if entry.get(m) is not None]
    return _mean(means) if means and len(means) == len(metrics) else None


def judge_summary(
    judgements: Mapping[str, SampleJudgements],
    systems: Sequence[str],
    metrics: Sequence[str],
    protocol: str = "ebmrl",
) -> dict[str, dict[str, Any]]:
    """Per system: each metric's mean over scored samples, counts, coverage and reasons
    for gaps; with ``protocol="authors"`` also ``authors``: the means with every zeroed
    candidate counted as 0."""
    summary: dict[str, dict[str, Any]] = {}
    for system in systems:
        entry: dict[str, Any] = {"not_scored_reasons": Counter()}
        authors: dict[str, Any] = {}
        for metric in metrics:
            values, missing, zeros = [], 0, 0
            for sample in judgements.values():
                judgement = sample.listwise.get(metric)
                if judgement is None:
                    continue
                if system in judgement.scores:
                    values.append(judgement.scores[system])
                    continue
                why = judgement.zeroed.get(system) or judgement.not_scored.get(system)
                if why is not None:
                    missing += 1
                    zeros += system in judgement.zeroed
                    entry["not_scored_reasons"][_reason_kind(why)] += 1
            entry[metric] = _mean(values)
            entry[f"{metric}_scored"] = len(values)
            entry[f"{metric}_not_scored"] = missing
            if values or missing:
                entry[f"{metric}_coverage"] = round(len(values) / (len(values) + missing), 4)
            authors[metric] = _mean(values + [0.0] * zeros)
            authors[f"{metric}_scored"] = len(values) + zeros
            authors[f"{metric}_zeroed"] = zeros
        entry["mean"] = _headline(entry, metrics)
        entry["not_scored_reasons"] = dict(entry["not_scored_reasons"])
        if protocol == "authors":
            authors["mean"] = _headline(authors, metrics)
            entry["authors"] = authors
        summary[system] = entry
    return summary


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary: the text before the first colon."""
    return reason.split(":", 1)[0].strip() or reason


def pairwise_summary(
    judgements: Mapping[str, SampleJudgements],
    pairs: Sequence[tuple[str, str]],
    metrics: Sequence[str],
    protocol: str = "ebmrl",
) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for x, y in pairs:
        name = pair_name(x, y)
        out[name] = {}
        for metric in metrics:
            tally = PairTally()
            for sample in judgements.values():
                result = sample.pairwise.get(name, {}).get(metric)
                if result is None:
                    continue
                tally.add(
                    result.first.winner, result.second.winner, result.error, result.confidences
                )
            out[name][metric] = tally.as_dict(authors=protocol == "authors")
    return out


def metrics_file(
    *,
    samples: int,
    systems: Sequence[str],
    judge: Mapping[str, Mapping[str, Any]] | None,
    auto: Mapping[str, Mapping[str, Any]],
    pairwise: Mapping[str, Any] | None,
    judged_samples: int | None = None,
) -> dict[str, Any]:
    """The numbers of ``metrics/eval.json``: numeric leaves only (``dvc metrics`` reads
    them); a metric without a value is left out rather than written as null. What the
    inputs determine only: request and cache counts go to the log and MLflow."""

    def numbers(mapping: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: v
            for k, v in mapping.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }

    out: dict[str, Any] = {"samples": samples, "systems": {}}
    for system in systems:
        entry: dict[str, Any] = {}
        if judge is not None:
            entry["judge"] = numbers(judge[system])
            if "authors" in judge[system]:
                entry["judge"]["authors"] = numbers(judge[system]["authors"])
        entry["auto"] = numbers(auto.get(system, {}))
        out["systems"][system] = entry
    if pairwise:
        out["pairwise"] = {
            pair: {
                metric: {
                    **numbers(tally),
                    **({"authors": numbers(tally["authors"])} if "authors" in tally else {}),
                }
                for metric, tally in per_metric.items()
            }
            for pair, per_metric in pairwise.items()
        }
    if judged_samples is not None:
        out["judged_samples"] = judged_samples
    return out


PLOT_METRICS = (
    ("judge", "veg", "VEG"),
    ("judge", "spc", "SPC"),
    ("judge", "cn", "CN"),
    ("judge", "mean", "judge mean"),
    ("judge.authors", "veg", "VEG (authors)"),
    ("judge.authors", "spc", "SPC (authors)"),
    ("judge.authors", "cn", "CN (authors)"),
    ("judge.authors", "mean", "judge mean (authors)"),
    ("auto", "bertscore_f1", "BERTScore F1"),
    ("auto", "rouge_l", "ROUGE-L"),
    ("auto", "clipscore", "CLIPScore"),
    ("auto", "clip_reward", "CLIP reward"),
    ("auto", "perception_accuracy", "perception accuracy"),
    ("auto", "perception_hallucinated", "perception hallucinated"),
    ("auto", "format_ok", "format rate"),
    ("auto", "answer_words", "answer words"),
    ("auto", "distinct_1", "distinct-1"),
    ("auto", "distinct_2", "distinct-2"),
)


def plot_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{metric, system, value}`` for the per-metric bar plots (dvc plots, report)."""
    rows = []
    for group, key, label in PLOT_METRICS:
        for system, entry in metrics["systems"].items():
            for part in group.split("."):
                entry = entry.get(part, {})
            value = entry.get(key)
            if value is not None:
                rows.append({"metric": label, "system": system, "value": value})
    return rows


def sample_record(
    context: JudgeContext,
    outputs: Sequence[SystemOutput],
    judgements: SampleJudgements | None,
    auto_rows: Mapping[str, Mapping[str, Any]],
    *,
    history: Sequence[tuple[str, str]],
    clip_problem: str | None = None,
) -> dict[str, Any]:
    """Everything the report shows about one sample (JSON-able) but its frames (the
    report stage adds them from the frame store)."""
    systems: dict[str, Any] = {}
    for output in outputs:
        judged: dict[str, Any] = {}
        for metric, judgement in (judgements.listwise if judgements else {}).items():
            if output.system in judgement.scores:
                judged[metric] = {
                    "score": judgement.scores[output.system],
                    "reason": judgement.reasons.get(output.system, ""),
                }
            elif output.system in judgement.zeroed:
                # Ours: not scored; the authors': 0, averaged in.
                judged[metric] = {"not_scored": judgement.zeroed[output.system], "zeroed": True}
            elif output.system in judgement.not_scored:
                judged[metric] = {"not_scored": judgement.not_scored[output.system]}
        systems[output.system] = {
            **output.as_dict(),
            "judge": judged,
            "auto": dict(auto_rows.get(output.system, {})),
        }
    record: dict[str, Any] = {
        "key": context.key,
        "clip_id": context.clip_id,
        "source": context.source,
        "assistant": context.assistant,
        "user": context.user,
        "assistant_profile": context.assistant_profile,
        "user_profile": context.user_profile,
        "history": [list(turn) for turn in history],
        "reference": context.reference,
        "clip_problem": clip_problem,
        "judged": judgements is not None,
        "systems": systems,
    }
    if judgements is not None:
        record["judge_labels"] = {m: j.labels for m, j in judgements.listwise.items()}
        record["judge_attempts"] = {m: j.attempts for m, j in judgements.listwise.items()}
        record["pairwise"] = {
            pair: {metric: result.as_dict() for metric, result in per_metric.items()}
            for pair, per_metric in judgements.pairwise.items()
        }
    return record
