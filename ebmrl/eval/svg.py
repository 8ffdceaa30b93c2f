"""Static SVG charts (no JavaScript, no external library): per-metric bars and curves.

Used by the HTML report, which must render offline. Pure functions: data in, SVG text out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d")
FONT = "font-family='Helvetica, Arial, sans-serif'"


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _fmt(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 10_000:
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return f"{value:.2e}"


def bar_panels(
    rows: Sequence[Mapping[str, object]], systems: Sequence[str], columns: int = 4
) -> str:
    """Small multiples: one panel per metric, one horizontal bar per system.

    ``rows`` are ``{"metric", "system", "value"}``. Each panel has its own scale (judge
    scores are 0-100, BERTScore 0-1): bars start at 0 and reach the panel's largest value.
    """
    metrics = list(dict.fromkeys(str(r["metric"]) for r in rows))
    if not metrics:
        return "<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'></svg>"
    values = {(str(r["metric"]), str(r["system"])): float(r["value"]) for r in rows}  # type: ignore[arg-type]
    bar_h, gap, label_w, bar_w, pad = 16, 4, 60, 150, 12
    panel_w = label_w + bar_w + 50
    panel_h = 26 + len(systems) * (bar_h + gap) + pad
    cols = min(columns, len(metrics))
    width, height = cols * panel_w, math.ceil(len(metrics) / cols) * panel_h
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' {FONT} font-size='11' role='img' "
        f"aria-label='metrics per system'>"
    ]
    for index, metric in enumerate(metrics):
        x0, y0 = (index % cols) * panel_w, (index // cols) * panel_h
        present = [values[(metric, s)] for s in systems if (metric, s) in values]
        top = max([abs(v) for v in present] + [1e-12])
        parts.append(
            f"<text x='{x0 + 4}' y='{y0 + 16}' font-weight='bold' font-size='12'>{escape(metric)}</text>"
        )
        for row, system in enumerate(systems):
            y = y0 + 24 + row * (bar_h + gap)
            parts.append(
                f"<text x='{x0 + label_w - 4}' y='{y + bar_h - 4}' text-anchor='end'>{escape(system)}</text>"
            )
            value = values.get((metric, system))
            if value is None:
                parts.append(
                    f"<text x='{x0 + label_w + 4}' y='{y + bar_h - 4}' fill='#999'>not scored</text>"
                )
                continue
            length = max(1.0, bar_w * abs(value) / top)
            parts.append(
                f"<rect x='{x0 + label_w}' y='{y}' width='{length:.1f}' height='{bar_h}' "
                f"fill='{colour(row)}'><title>{escape(system)}: {value}</title></rect>"
            )
            parts.append(
                f"<text x='{x0 + label_w + length + 4:.1f}' y='{y + bar_h - 4}'>{_fmt(value)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def line_panels(
    series: Mapping[str, Sequence[tuple[float, float]]],
    x_label: str = "step",
    columns: int = 3,
    x_ticks: Sequence[str] | None = None,
) -> str:
    """Small multiples: one line chart per series (own y range), shared x label.

    ``x_ticks`` names the points x = 0, 1, ... (e.g. the systems base, sft, grpo: one
    curve across the training stages) instead of printing the x range.
    """
    names = [n for n, points in series.items() if points]
    if not names:
        return "<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'></svg>"
    panel_w, panel_h = 300, 190
    left, right, top_pad, bottom = 46, 12, 26, 34
    cols = min(columns, len(names))
    width, height = cols * panel_w, math.ceil(len(names) / cols) * panel_h
    plot_w, plot_h = panel_w - left - right, panel_h - top_pad - bottom
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' {FONT} font-size='10' role='img' aria-label='curves'>"
    ]
    for index, name in enumerate(names):
        points = [(float(x), float(y)) for x, y in series[name] if math.isfinite(float(y))]
        x0, y0 = (index % cols) * panel_w, (index // cols) * panel_h
        parts.append(
            f"<text x='{x0 + left}' y='{y0 + 16}' font-weight='bold' font-size='12'>{escape(name)}</text>"
        )
        parts.append(
            f"<rect x='{x0 + left}' y='{y0 + top_pad}' width='{plot_w}' height='{plot_h}' "
            "fill='none' stroke='#ccc'/>"
        )
        if not points:
            continue
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x_min, x_max = min(xs), max(xs)
        y_min, y_max = min(ys), max(ys)
        if x_max == x_min:
            x_max = x_min + 1
        if y_max == y_min:
            y_min, y_max = y_min - 0.5, y_max + 0.5

        def sx(x: float, x_min=x_min, x_max=x_max, x0=x0) -> float:
            return x0 + left + plot_w * (x - x_min) / (x_max - x_min)

        def sy(y: float, y_min=y_min, y_max=y_max, y0=y0) -> float:
            return y0 + top_pad + plot_h * (1 - (y - y_min) / (y_max - y_min))

        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(
            f"<polyline points='{path}' fill='none' stroke='{colour(index)}' stroke-width='1.8'/>"
        )
        for x, y in points if len(points) <= 60 else ():
            parts.append(
                f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='1.8' fill='{colour(index)}'/>"
            )
        for value, anchor_y in ((y_max, top_pad + 4), (y_min, top_pad + plot_h)):
            parts.append(
                f"<text x='{x0 + left - 4}' y='{y0 + anchor_y}' text-anchor='end'>{_fmt(value)}</text>"
            )
        base = y0 + top_pad + plot_h + 14
        if x_ticks is not None:
            for tick, label in enumerate(x_ticks):
                anchor = "start" if tick == 0 else "end" if tick == len(x_ticks) - 1 else "middle"
                parts.append(
                    f"<text x='{sx(tick):.1f}' y='{base}' text-anchor='{anchor}'>{escape(label)}</text>"
                )
        else:
            parts.append(f"<text x='{x0 + left}' y='{base}'>{_fmt(x_min)}</text>")
            parts.append(
                f"<text x='{x0 + left + plot_w}' y='{base}' text-anchor='end'>{_fmt(x_max)}</text>"
            )
        parts.append(
            f"<text x='{x0 + left + plot_w / 2}' y='{base + 12}' text-anchor='middle' "
            f"fill='#666'>{escape(x_label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def reward_series(history: Sequence[Mapping[str, object]]) -> dict[str, list[tuple[float, float]]]:
    """``reward`` and each ``rewards/<name>/mean`` against ``step`` from a GRPO log."""
    keys = ["reward"] + sorted(
        {k for entry in history for k in entry if k.startswith("rewards/") and k.endswith("/mean")}
    )
    series: dict[str, list[tuple[float, float]]] = {}
    for key in keys:
        points = []
        for entry in history:
            value, step = entry.get(key), entry.get("step")
            if isinstance(value, int | float) and isinstance(step, int | float):
                points.append((float(step), float(value)))
        if points:
            series[key] = points
    return series
