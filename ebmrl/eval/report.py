"""The evaluation as one static HTML page that renders offline (no script, no CDN).

``render_report(data)`` turns the evaluation's data (see ``ebmrl.eval.summaries``:
summaries, per-sample records with inline frame thumbnails) into a self-contained page:
what the run is (for the offline demo: tiny models, synthetic clips), what training
changed (perception against the clips' ground truth and the rewards, per system, and
the GRPO reward curves), a summary table, the judge (and whether to trust it), what
could not be scored and why, pairwise and VideoQA results, charts (inline SVG), and one
card per sample with its frames, both character sheets, the conversation, the reference,
and every system's perception, thinking, answer and scores side by side.

Every judge, pairwise and VideoQA number says which protocol produced it: a coloured
badge in its column header and a ``data-protocol`` attribute (``ebmrl``: ours;
``authors``: as the authors' scripts score) on its cell, explained by a legend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from ebmrl.eval import svg
from ebmrl.eval.pairwise import CONFIDENCES

JUDGE_LABELS = {"veg": "VEG", "spc": "SPC", "cn": "CN", "mean": "Mean"}
AUTO_COLUMNS = (
    ("bertscore_f1", "BERTScore F1", 3),
    ("rouge_l", "ROUGE-L", 3),
    ("clipscore", "CLIPScore", 3),
    ("clip_reward", "CLIP reward", 3),
    ("perception_accuracy", "Perception accuracy", 2),
    ("perception_hallucinated", "Hallucinated", 2),
    ("format_ok", "Format rate", 2),
    ("answer_words", "Answer words", 1),
    ("distinct_1", "Distinct-1", 2),
    ("distinct_2", "Distinct-2", 2),
)

CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1400px;
  color: #222; background: #fafafa; padding: 0 16px; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 2px solid #ddd; }
.info { color: #555; margin: 0 0 16px; }
table { border-collapse: collapse; background: #fff; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; font-size: 14px; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
td.best { font-weight: bold; background: #eef6ee; }
.na { color: #a33; }
.small { font-size: 12px; color: #666; }
.gap { color: #a33; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: 18px 0;
  padding: 12px 16px; }
.card h3 { margin: 0 0 8px; }
.frames { display: flex; gap: 4px; overflow-x: auto; margin: 6px 0 10px; }
.frames img { height: 84px; border-radius: 3px; border: 1px solid #ccc; }
.context { display: grid; grid-template-columns: 1fr 1fr 1fr; gap: 12px; font-size: 13px; }
.context pre { white-space: pre-wrap; font-family: inherit; margin: 4px 0; }
.systems { display: grid; gap: 10px; margin-top: 10px; }
.system { border: 1px solid #e3e3e3; border-radius: 5px; padding: 8px 10px; font-size: 13px;
  background: #fcfcfc; }
.system h4 { margin: 0 0 6px; }
.block { margin: 4px 0; white-space: pre-wrap; word-break: break-word; }
.label { font-weight: bold; color: #555; font-size: 11px; text-transform: uppercase; }
.answer { background: #fff8e1; padding: 4px 6px; border-radius: 3px; }
.scores { margin-top: 6px; font-size: 12px; }
.scores span { display: inline-block; margin: 2px 6px 2px 0; padding: 1px 6px;
  border-radius: 3px; background: #eef; }
.scores span.not { background: #fbe9e9; color: #a33; }
.chart { background: #fff; border: 1px solid #ddd; padding: 8px; overflow-x: auto; }
.about { background: #fff8e1; border: 1px solid #e8d9a8; border-radius: 6px;
  padding: 10px 14px; font-size: 15px; }
td.wrong { color: #a33; }
.proto { display: inline-block; padding: 1px 7px; border-radius: 9px; color: #fff;
  font-size: 11px; font-weight: bold; }
.proto.ebmrl { background: #2563eb; } .proto.authors { background: #d97706; }
td.p-ebmrl { border-left: 4px solid #2563eb; } td.p-authors { border-left: 4px solid #d97706; }
th.group { text-align: center; }
.legend { font-size: 13px; margin: 6px 0 10px; } .legend div { margin: 3px 0; }
"""

PROTOCOLS = {
    "ebmrl": "ours: a judge reply is used only when it is entirely valid, anything else is "
    "not scored (coverage shown); pairwise outcomes need both orders; VideoQA accuracy by "
    "our lenient answer parser",
    "authors": "as the authors' scripts score: a candidate whose score cannot be read counts "
    "0 and is averaged in (a reply with nothing readable drops the sample), the judge "
    "scores a seeded random subset, a pairwise verdict kept from the first order counts; "
    "VideoQA accuracy by exact match of the answer block",
}


def badge(protocol: str) -> str:
    return f"<span class='proto {escape(protocol)}'>{escape(protocol)}</span>"


def legend(protocols: Sequence[str]) -> str:
    rows = "".join(
        f"<div>{badge(p)} {escape(PROTOCOLS[p])}</div>" for p in protocols if p in PROTOCOLS
    )
    return f"<div class='legend' id='protocols'>{rows}</div>"


def _cell(content: str, protocol: str | None = None, best: bool = False) -> str:
    classes = (["best"] if best else []) + ([f"p-{protocol}"] if protocol else [])
    klass = f" class='{' '.join(classes)}'" if classes else ""
    data = f" data-protocol='{protocol}'" if protocol else ""
    return f"<td{klass}{data}>{content}</td>"


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _best(values: Mapping[str, Any]) -> set[str]:
    present = {k: v for k, v in values.items() if isinstance(v, int | float)}
    if len(set(present.values())) < 2:  # nothing to single out
        return set()
    top = max(present.values())
    return {k for k, v in present.items() if v == top}


# -------------------------------------------------------------------- sections
def about_section(about: Mapping[str, Any]) -> str:
    """What this run is and is not, in two sentences, when its models or clips are the
    offline demo's (the stage detects them)."""
    tiny, synthetic = about.get("tiny_models") or [], about.get("synthetic_clips") or 0
    if not tiny and not synthetic:
        return ""
    what = []
    if tiny:
        what.append("tiny models built on this machine (" + ", ".join(map(str, tiny)) + ")")
    if synthetic:
        what.append(f"{synthetic} synthetic, procedurally rendered clips with known scenes")
    return (
        "<div class='about' id='about'><b>This is the offline demo of the EBM-RL pipeline"
        f"</b>: {escape(' and '.join(what))}, so every stage, reward and metric really runs "
        "and the perception can be checked against the ground truth of each clip. It is not "
        "a measure of role-play quality: the numbers show whether training moves the "
        "method's signals the right way, not how good a character a real model plays "
        "(for that, run the paper profile on real clips with a real judge).</div>"
    )


def perception_section(data: Mapping[str, Any]) -> str:
    """Perception against the ground truth, per system and per attribute."""
    systems: Sequence[str] = data["systems"]
    auto = data.get("auto") or {}
    scored = {s: auto.get(s, {}).get("perception_accuracy") for s in systems}
    if all(v is None for v in scored.values()):
        return ""
    names = list(
        dict.fromkeys(
            n for s in systems for n in (auto.get(s, {}).get("perception_by_attribute") or {})
        )
    )
    head = ["System", "Accuracy", "Hallucinated", "Outputs with ground truth"] + names
    best = _best(scored)
    rows = []
    for system in systems:
        entry = auto.get(system, {})
        klass = " class='best'" if system in best else ""
        cells = [
            f"<td>{escape(system)}</td>",
            f"<td{klass}>{_num(entry.get('perception_accuracy'), 2)}</td>",
            f"<td>{_num(entry.get('perception_hallucinated'), 2)}</td>",
            f"<td>{entry.get('perception_scored', 0)}</td>",
        ]
        by = entry.get("perception_by_attribute") or {}
        for name in names:
            shares = by.get(name)
            cells.append(
                "<td>—</td>"
                if shares is None
                else f"<td>{shares['correct']:.2f} <span class='small wrong'>"
                f"({shares['wrong']:.2f} wrong)</span></td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = (
        "<p class='small'>For clips whose scene is known (the demo's rendered clips), the "
        "perception block is read with the scene vocabulary and its synonyms: accuracy is "
        "the share of the clip's attributes (background colour, lighting, number of "
        "figures, their colour, their motion, danger) it states correctly, hallucinated the "
        "share it states wrongly; unmentioned attributes count as neither. It sits next to "
        "CLIPScore and the CLIP reward, which score the same block with the CLIP model "
        "instead of the ground truth. Clips without ground truth are left out.</p>"
    )
    head_html = "".join(f"<th>{escape(h.replace('_', ' '))}</th>" for h in head)
    return f"{note}<table id='perception'><tr>{head_html}</tr>{''.join(rows)}</table>"


STAGE_CURVES = (
    ("perception_accuracy", "perception accuracy"),
    ("perception_hallucinated", "perception hallucinated"),
    ("clip_reward", "CLIP reward"),
    ("clipscore", "CLIPScore"),
    ("format_score", "format reward"),
    ("bertscore_f1", "answer reward (BERTScore F1)"),
)


def stage_curves(data: Mapping[str, Any]) -> str:
    """One curve per metric across the systems in their order (base, sft, grpo)."""
    systems: Sequence[str] = data["systems"]
    auto = data.get("auto") or {}
    series = {}
    for key, label in STAGE_CURVES:
        points = [
            (float(i), float(auto[s][key]))
            for i, s in enumerate(systems)
            if isinstance((auto.get(s) or {}).get(key), int | float)
        ]
        if len(points) == len(systems) and len(systems) > 1:
            series[label] = points
    if not series:
        return ""
    chart = svg.line_panels(series, x_label="system", x_ticks=list(systems))
    return f"<div class='chart' id='stage-curves'>{chart}</div>"


def judge_section(data: Mapping[str, Any]) -> str:
    """Who judged, whether to believe it, and how to use a real judge."""
    info, about = data.get("info") or {}, data.get("about") or {}
    judge = info.get("judge")
    if judge in (None, "off"):
        return (
            "<p id='judge'>No judge ran. Judge with any OpenAI-compatible endpoint: "
            "<code>ebmrl evaluate --judge-url URL --judge-model NAME</code>.</p>"
        )
    # Request counts are run statistics (the stage's log line, MLflow), not in the page: a
    # rerun from the cache must leave the page's bytes as they were.
    counts = " How often it was asked and how many replies were invalid: the stage's log."
    how = (
        "Point it at a real judge (a strong VLM served by vLLM, SGLang or a hosted API) with "
        "<code>ebmrl evaluate --judge-url https://HOST/v1 --judge-model NAME</code>, or in "
        "params.yaml: <code>evaluate.judge.backend: {kind: http, base_url: https://HOST/v1, "
        "model: NAME}</code> with <code>evaluate.judge.serve_local: false</code> (the API key "
        "comes from the variable named by <code>api_key_env</code>)."
    )
    if about.get("tiny_judge"):
        return (
            "<p id='judge' class='gap'><b>The judge here is a tiny model built for the demo "
            f"({escape(str(judge))})</b>, a few layers that never learned to grade role-play: "
            'its VEG/SPC/CN scores and pairwise verdicts are noise or "not scored", by design '
            f"rather than by accident.{escape(counts)} {how}</p>"
        )
    return f"<p id='judge'>Judge: {escape(str(judge))}.{escape(counts)} {how}</p>"


def summary_table(data: Mapping[str, Any]) -> str:
    systems: Sequence[str] = data["systems"]
    judge = data.get("judge") or {}
    metrics = list(data.get("judge_metrics") or [])
    judge_cols = [*metrics, "mean"] if judge else []
    authors = any("authors" in judge.get(s, {}) for s in systems)
    settings = data.get("system_settings") or {}
    auto = data.get("auto") or {}
    best = {m: _best({s: judge.get(s, {}).get(m) for s in systems}) for m in judge_cols}
    best_authors = {
        m: _best({s: (judge.get(s, {}).get("authors") or {}).get(m) for s in systems})
        for m in judge_cols
    }
    best |= {k: _best({s: auto.get(s, {}).get(k) for s in systems}) for k, _, _ in AUTO_COLUMNS}
    groups = ["<th></th>"]
    if judge_cols:
        groups.append(f"<th class='group' colspan='{len(judge_cols)}'>Judge {badge('ebmrl')}</th>")
    if authors:
        groups.append(
            f"<th class='group' colspan='{len(judge_cols)}'>Judge {badge('authors')}</th>"
        )
    groups.append(
        f"<th class='group' colspan='{len(AUTO_COLUMNS)}'>Automatic metrics "
        "(the same under both protocols)</th>"
    )
    header = ["System"] + [JUDGE_LABELS.get(m, m.upper()) for m in judge_cols]
    header += [JUDGE_LABELS.get(m, m.upper()) for m in judge_cols] if authors else []
    header += [label for _, label, _ in AUTO_COLUMNS]
    rows = []
    for system in systems:
        shown_name = escape(system)
        setting = settings.get(system) or {}
        if setting and (setting.get("prompt", "ebm") != "ebm" or not setting.get("frames", True)):
            extra = f"prompt {setting.get('prompt', 'ebm')}"
            extra += "" if setting.get("frames", True) else ", no frames"
            shown_name += f"<div class='small'>{escape(extra)}</div>"
        cells = [f"<td>{shown_name}</td>"]
        entry = judge.get(system, {})
        for metric in judge_cols:
            value = entry.get(metric)
            note = ""
            if metric != "mean":
                scored = entry.get(f"{metric}_scored", 0)
                total = scored + entry.get(f"{metric}_not_scored", 0)
                note = f"<div class='small'>{scored}/{total} scored</div>"
            shown = _num(value, 1) if value is not None else "<span class='na'>not scored</span>"
            cells.append(_cell(shown + note, "ebmrl", system in best[metric]))
        if authors:
            theirs = entry.get("authors") or {}
            for metric in judge_cols:
                value = theirs.get(metric)
                note = ""
                if metric != "mean":
                    zeros = theirs.get(f"{metric}_zeroed", 0)
                    note = (
                        f"<div class='small'>{theirs.get(f'{metric}_scored', 0)} averaged, "
                        f"{zeros} as 0</div>"
                    )
                shown = _num(value, 1) if value is not None else "<span class='na'>none</span>"
                cells.append(_cell(shown + note, "authors", system in best_authors[metric]))
        for key, _, digits in AUTO_COLUMNS:
            value = auto.get(system, {}).get(key)
            cells.append(_cell(_num(value, digits), best=system in best[key]))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    return f"<table id='summary'><tr>{''.join(groups)}</tr><tr>{head}</tr>{''.join(rows)}</table>"


def gaps_section(data: Mapping[str, Any]) -> str:
    """What could not be scored, and why (the honest part of the report)."""
    items = []
    for system, entry in (data.get("judge") or {}).items():
        for reason, count in entry.get("not_scored_reasons", {}).items():
            items.append(
                f"<li><b>{escape(system)}</b>: {count} judgement(s) not scored: {escape(reason)}</li>"
            )
    problems: dict[tuple[str, str], list[str]] = {}  # (who, why) -> sample keys
    for sample in data.get("samples", []):
        if sample.get("clip_problem"):
            problems.setdefault(("every system", sample["clip_problem"]), []).append(sample["key"])
            continue
        for system, out in sample.get("systems", {}).items():
            if out.get("error"):
                problems.setdefault((system, out["error"]), []).append(sample["key"])
    for (who, why), keys in problems.items():
        shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        items.append(
            f"<li><b>{escape(who)}</b>: {escape(why)} <span class='small'>({len(keys)} "
            f"sample(s): {escape(shown)})</span></li>"
        )
    for name, per_system in (data.get("videoqa") or {}).items():
        for system, summary in per_system.items():
            for reason, count in (summary.get("not_scored_reasons") or {}).items():
                items.append(
                    f"<li>VideoQA {escape(name)}, {escape(system)}: {count} question(s) not "
                    f"scored: {escape(reason)}</li>"
                )
    if not items:
        return "<p>Every sample and question was scored.</p>"
    return f"<ul class='gap' id='gaps'>{''.join(items)}</ul>"


PAIR_COLUMNS = (
    ("win", "Win", None),
    ("tie", "Tie", None),
    ("loss", "Loss", None),
    ("win_rate", "Win rate", 2),
    ("decisive_win_rate", "Decisive win rate", 2),
    ("net_win_rate", "Net win rate", 2),
    ("p_value", "p (two-sided)", 4),
)


def pairwise_table(pairwise: Mapping[str, Any]) -> str:
    authors = any("authors" in t for per in pairwise.values() for t in per.values())
    rows = []
    for pair, per_metric in pairwise.items():
        for metric, tally in per_metric.items():
            figures = [("ebmrl", tally)] + ([("authors", tally["authors"])] if authors else [])
            cells = [
                f"<td>{escape(pair.replace('_vs_', ' vs '))}</td><td>{escape(metric.upper())}</td>"
            ]
            for protocol, numbers in figures:
                for key, _, digits in PAIR_COLUMNS:
                    value = numbers.get(key)
                    shown = _num(value, digits) if digits else str(value or 0)
                    cells.append(_cell(shown, protocol))
            confidence = "/".join(str(tally.get(f"confidence_{c}", 0)) for c in CONFIDENCES)
            cells += [
                f"<td>{tally.get('not_scored', 0)}</td>",
                f"<td>{tally.get('first_order_only', 0)}</td>",
                f"<td>{tally.get('position_flips', 0)}</td>",
                f"<td>{confidence}</td>",
            ]
            rows.append("<tr>" + "".join(cells) + "</tr>")
    span = len(PAIR_COLUMNS)
    groups = "<th colspan='2'></th>" + f"<th class='group' colspan='{span}'>{badge('ebmrl')}</th>"
    if authors:
        groups += f"<th class='group' colspan='{span}'>{badge('authors')}</th>"
    groups += "<th colspan='4'></th>"
    labels = [label for _, label, _ in PAIR_COLUMNS] * (2 if authors else 1)
    head = "".join(
        f"<th>{escape(h)}</th>"
        for h in (
            "Pair (first vs second)",
            "Metric",
            *labels,
            "Not scored",
            "First order only",
            "Position flips",
            "Confidence (high/medium/low)",
        )
    )
    note = (
        "<p class='small'>Each pair is judged in both orders; a verdict that follows the "
        "position rather than the line (both orders prefer [A], or both [B]) counts as a tie "
        "and as a position flip. Decisive win rate: wins over wins and losses; net win rate: "
        "(wins - losses) over the scored pairs; p: exact two-sided binomial test of the wins "
        "against the losses (ties left out). A verdict whose second order failed counts "
        "only in the authors' figures (First order only).</p>"
    )
    return f"{note}<table id='pairwise'><tr>{groups}</tr><tr>{head}</tr>{''.join(rows)}</table>"


def videoqa_tables(videoqa: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    for name, per_system in videoqa.items():
        types = sorted({t for s in per_system.values() for t in (s.get("by_type") or {})})
        authors = any("authors" in s for s in per_system.values())
        groups = (
            f"<th></th><th class='group' colspan='{2 + len(types)}'>{badge('ebmrl')} "
            "lenient parser</th>"
        )
        head = ["System", "Accuracy", "Unparseable"] + types
        if authors:
            groups += (
                f"<th class='group' colspan='{2 + len(types)}'>{badge('authors')} exact match</th>"
            )
            head += ["Accuracy", "No answer block"] + types
        groups += "<th colspan='2'></th>"
        head += ["Scored", "Not scored"]
        rows = []
        for system, summary in per_system.items():
            cells = [
                f"<td>{escape(system)}</td>",
                _cell(_num(summary.get("accuracy"), 3), "ebmrl"),
                _cell(str(summary.get("unparseable", 0)), "ebmrl"),
            ]
            for t in types:
                entry = (summary.get("by_type") or {}).get(t)
                cells.append(_cell(_num(entry.get("accuracy"), 3) if entry else "—", "ebmrl"))
            if authors:
                theirs = summary.get("authors") or {}
                cells += [
                    _cell(_num(theirs.get("accuracy"), 3), "authors"),
                    _cell(str(theirs.get("no_answer_block", 0)), "authors"),
                ]
                for t in types:
                    entry = ((summary.get("by_type") or {}).get(t) or {}).get("authors")
                    shown = _num(entry.get("accuracy"), 3) if entry else "—"
                    cells.append(_cell(shown, "authors"))
            cells += [
                f"<td>{summary.get('scored', 0)}/{summary.get('questions', 0)}</td>",
                f"<td>{summary.get('not_scored', 0)}</td>",
            ]
            rows.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(
            f"<h3>{escape(name)}</h3><table class='videoqa'><tr>{groups}</tr><tr>"
            + "".join(f"<th>{escape(h)}</th>" for h in head)
            + f"</tr>{''.join(rows)}</table>"
        )
    return "".join(parts)


def _scores_line(out: Mapping[str, Any], metrics: Sequence[str]) -> str:
    spans = []
    for metric in metrics:
        judged = (out.get("judge") or {}).get(metric)
        if judged is None:
            continue
        label = JUDGE_LABELS.get(metric, metric.upper())
        if "score" in judged:
            reason = escape(judged.get("reason") or "")
            spans.append(f"<span title='{reason}'>{label} {_num(judged['score'], 0)}</span>")
        elif judged.get("zeroed"):
            why = escape(judged.get("not_scored", ""))
            spans.append(
                f"<span class='not' title='{why}'>{label} not scored "
                f"{badge('ebmrl')} / 0 {badge('authors')}</span>"
            )
        else:
            why = escape(judged.get("not_scored", ""))
            spans.append(f"<span class='not' title='{why}'>{label} not scored</span>")
    auto = out.get("auto") or {}
    for key, label, digits in AUTO_COLUMNS:
        if key in ("format_ok",):
            continue
        if auto.get(key) is not None:
            spans.append(f"<span>{escape(label)} {_num(auto[key], digits)}</span>")
    if auto.get("format_score") is not None:
        spans.append(f"<span>format {_num(auto['format_score'], 1)}/5</span>")
    return "".join(spans)


def sample_card(sample: Mapping[str, Any], systems: Sequence[str], metrics: Sequence[str]) -> str:
    frames = "".join(
        f"<img src='{escape(url)}' alt='frame {i + 1}'>"
        for i, url in enumerate(sample.get("frames", []))
    )
    if not frames:
        frames = f"<span class='gap'>{escape(sample.get('clip_problem') or 'no frames')}</span>"
    history = "\n".join(f"{speaker}: {line}" for speaker, line in sample.get("history", []))
    cards = []
    for system in systems:
        out = (sample.get("systems") or {}).get(system, {})
        if out.get("error"):
            body = f"<div class='gap'>not generated: {escape(out['error'])}</div>"
        else:
            blocks = []
            for name in ("perception", "think"):
                text = out.get(name)
                shown = escape(text) if text else "<span class='na'>(no block)</span>"
                blocks.append(
                    f"<div class='block'><span class='label'>{name}</span><br>{shown}</div>"
                )
            answer = out.get("answer")
            if answer is None:
                spoken = out.get("spoken") or ""
                shown = (
                    f"<span class='na'>(no &lt;answer&gt; block; judged on the text without "
                    f"blocks)</span><br>{escape(spoken)}"
                    if spoken
                    else "<span class='na'>(nothing said: scored 0)</span>"
                )
            else:
                shown = escape(answer)
            blocks.append(
                f"<div class='block answer'><span class='label'>answer</span><br>{shown}</div>"
            )
            unjudged = (
                ""
                if sample.get("judged", True) or not metrics
                else "<span class='small'>not in the judged subset</span>"
            )
            body = (
                "".join(blocks)
                + f"<div class='scores'>{_scores_line(out, metrics)}{unjudged}</div>"
            )
        cards.append(f"<div class='system'><h4>{escape(system)}</h4>{body}</div>")
    columns = max(1, len(systems))
    return (
        f"<div class='card' id='sample-{escape(sample['key'])}'>"
        f"<h3>{escape(sample['key'])} <span class='small'>clip {escape(sample.get('clip_id', ''))}"
        f" · {escape(sample.get('source', ''))}</span></h3>"
        f"<div class='frames'>{frames}</div>"
        "<div class='context'>"
        f"<div><span class='label'>{escape(sample.get('assistant', ''))} (speaks)</span>"
        f"<pre>{escape(sample.get('assistant_profile', ''))}</pre></div>"
        f"<div><span class='label'>{escape(sample.get('user', ''))} (listens)</span>"
        f"<pre>{escape(sample.get('user_profile', ''))}</pre></div>"
        f"<div><span class='label'>conversation</span><pre>{escape(history)}</pre>"
        f"<span class='label'>reference reply</span><pre>{escape(sample.get('reference', ''))}</pre></div>"
        "</div>"
        f"<div class='systems' style='grid-template-columns: repeat({columns}, 1fr)'>{''.join(cards)}</div>"
        "</div>"
    )


def render_report(data: Mapping[str, Any]) -> str:
    systems = list(data["systems"])
    metrics = list(data.get("judge_metrics") or [])
    info = " · ".join(
        f"{escape(str(k))}: {escape(str(v))}" for k, v in (data.get("info") or {}).items()
    )
    videoqa_authors = any(
        "authors" in summary
        for per_system in (data.get("videoqa") or {}).values()
        for summary in per_system.values()
    )
    used = ["ebmrl"] + (
        ["authors"] if data.get("judge_protocol") == "authors" or videoqa_authors else []
    )
    sections = [
        f"<h1>{escape(data.get('title', 'Evaluation'))}</h1><p class='info'>{info}</p>",
        about_section(data.get("about") or {}),
    ]
    perception, curves = perception_section(data), stage_curves(data)
    rewards = svg.reward_series(data.get("reward_history") or [])
    if perception or curves or rewards:
        sections.append("<h2 id='learning'>What training changed</h2>")
    if perception:
        sections += ["<h3>Perception against the ground truth</h3>", perception]
    if curves:
        sections += [
            "<h3>Perception and rewards per system</h3>",
            "<p class='small'>Each system's greedy outputs on the evaluation samples, in the "
            "order the systems are listed (base model, after SFT, after GRPO).</p>",
            curves,
        ]
    if rewards:
        sections += [
            "<h3>GRPO reward curves</h3>",
            f"<div class='chart'>{svg.line_panels(rewards)}</div>",
        ]
    sections += [
        "<h2>Summary</h2>",
        legend(used),
        summary_table(data),
        "<p class='small'>Judge scores are 0–100 (VEG, SPC: the judge sees 8 frames; CN: "
        "text only), the mean of scored samples; bold: best per column. Automatic metrics "
        "compare the spoken line with the reference (BERTScore, ROUGE-L) and the perception "
        "with the clip (CLIPScore, and the CLIP reward: the best frame's cosine); perception "
        "accuracy checks it against the clip's known scene; format rate: share of perfectly "
        "formatted outputs.</p>",
        "<h2>Judge</h2>",
        judge_section(data),
        "<h2>Not scored</h2>",
        gaps_section(data),
    ]
    if data.get("pairwise"):
        sections += ["<h2>Pairwise (both orders)</h2>", pairwise_table(data["pairwise"])]
    if data.get("videoqa"):
        sections += ["<h2>Zero-shot VideoQA</h2>", videoqa_tables(data["videoqa"])]
    if data.get("plot_rows"):
        sections += [
            "<h2>Metrics per system</h2>",
            f"<div class='chart'>{svg.bar_panels(data['plot_rows'], systems)}</div>",
        ]
    sections.append(f"<h2>Samples ({len(data.get('samples', []))})</h2>")
    sections += [sample_card(s, systems, metrics) for s in data.get("samples", [])]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(data.get('title', 'Evaluation'))}</title><style>{CSS}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )
