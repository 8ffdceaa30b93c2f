"""The static HTML report and its SVG charts: complete, escaped, and offline."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import ink, no_external_resources, screenshot

from ebmrl.eval import svg
from ebmrl.eval.frames import jpeg_data_url, judge_frames
from ebmrl.eval.report import render_report


def report_data() -> dict:
    frames = judge_frames(
        np.random.default_rng(0).integers(0, 255, (8, 60, 80, 3), np.uint8), 4, 64
    )
    sample = {
        "key": "s1:7",
        "clip_id": "abc",
        "source": "The Lantern Quarter",
        "assistant": "Mira Vale",
        "user": "user_fan",
        "assistant_profile": "Name: Mira Vale\nPersonality: steady",
        "user_profile": "Name: user_fan",
        "history": [["user_fan", "What was that <noise>?"]],
        "reference": "Eyes up, everyone.",
        "clip_problem": None,
        "frames": [jpeg_data_url(f) for f in frames],
        "systems": {
            "base": {
                "text": "\n",
                "spoken": "",
                "answer": None,
                "error": None,
                "judge": {"veg": {"score": 0.0, "reason": "empty"}},
                "auto": {"rouge_l": 0.0},
            },
            "grpo": {
                "perception": "Flames <b>rise</b>.",
                "think": "Danger.",
                "answer": "Move now!",
                "spoken": "Move now!",
                "error": None,
                "judge": {
                    "veg": {"score": 70.0, "reason": "grounded"},
                    "cn": {"not_scored": "invalid JSON after 2 attempt(s): not JSON"},
                },
                "auto": {"bertscore_f1": 0.5, "rouge_l": 0.2, "format_score": 5.0},
            },
        },
    }
    missing = {
        **sample,
        "key": "s1:8",
        "frames": [],
        "clip_problem": "clip zzz unreadable: gone",
        "systems": {
            "base": {"error": "clip zzz unreadable: gone"},
            "grpo": {"error": "clip zzz unreadable: gone"},
        },
    }
    return {
        "title": "EBM-RL evaluation",
        "info": {"split": "test", "samples": 2},
        "systems": ["base", "grpo"],
        "judge_metrics": ["veg", "cn"],
        "judge": {
            "base": {
                "veg": 0.0,
                "veg_scored": 1,
                "veg_not_scored": 1,
                "cn": None,
                "cn_scored": 0,
                "cn_not_scored": 2,
                "mean": None,
                "not_scored_reasons": {"invalid JSON after 2 attempt(s)": 1},
            },
            "grpo": {
                "veg": 70.0,
                "veg_scored": 1,
                "veg_not_scored": 1,
                "cn": None,
                "cn_scored": 0,
                "cn_not_scored": 2,
                "mean": None,
                "not_scored_reasons": {},
            },
        },
        "auto": {
            "base": {"rouge_l": 0.0, "format_ok": 0.0},
            "grpo": {"rouge_l": 0.2, "format_ok": 1.0},
        },
        "pairwise": {
            "grpo_vs_base": {
                "veg": {
                    "win": 1,
                    "tie": 0,
                    "loss": 0,
                    "not_scored": 1,
                    "position_flips": 0,
                    "win_rate": 1.0,
                }
            }
        },
        "videoqa": {
            "nextqa": {
                "grpo": {
                    "accuracy": 0.5,
                    "questions": 6,
                    "scored": 6,
                    "unparseable": 1,
                    "not_scored": 0,
                    "by_type": {"DC": {"accuracy": 0.5}},
                }
            }
        },
        "plot_rows": [
            {"metric": "VEG", "system": "base", "value": 0.0},
            {"metric": "VEG", "system": "grpo", "value": 70.0},
            {"metric": "ROUGE-L", "system": "grpo", "value": 0.2},
        ],
        "reward_history": [
            {"step": s, "reward": s / 10, "rewards/format/mean": -1 + s / 5} for s in range(1, 9)
        ]
        + [{"step": 8, "train_runtime": 3.0}],
        "samples": [sample, missing],
    }


def test_report_has_every_section_escaped_and_offline():
    html = render_report(report_data())
    for part in (
        "id='summary'",
        "id='gaps'",
        "id='pairwise'",
        "Zero-shot VideoQA",
        "GRPO reward curves",
        "Metrics per system",
        "id='sample-s1:7'",
        "id='sample-s1:8'",
    ):
        assert part in html
    assert "Flames &lt;b&gt;rise&lt;/b&gt;." in html and "<b>rise</b>" not in html
    assert "What was that &lt;noise&gt;?" in html
    assert "clip zzz unreadable: gone" in html and "invalid JSON after 2 attempt(s)" in html
    assert "CN not scored" in html and "VEG 70" in html
    assert html.count("<img src='data:image/jpeg;base64,") == 4
    assert no_external_resources(html) == [] and "<script" not in html
    # The best value of a column is marked; a column where all are equal is not.
    assert "<td class='best p-ebmrl' data-protocol='ebmrl'>70.0" in html


def test_svg_charts_are_well_formed():
    bars = svg.bar_panels(report_data()["plot_rows"], ["base", "grpo", "sft"])
    root = ET.fromstring(bars)
    rects = root.findall("{http://www.w3.org/2000/svg}rect")
    assert len(rects) == 3 and "not scored" in bars  # sft has no values
    curves = svg.line_panels(svg.reward_series(report_data()["reward_history"]))
    root = ET.fromstring(curves)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2  # reward and rewards/format/mean; the summary row is skipped
    assert len(lines[0].get("points").split()) == 8
    assert svg.reward_series([{"step": 1, "loss": 2.0}]) == {}


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    page = tmp_path / "index.html"
    page.write_text(render_report(report_data()), encoding="utf-8")
    png = tmp_path / "report.png"
    screenshot(page, png, tmp_path / "profile")
    share, spread = ink(png)
    assert share > 0.05 and spread > 20, (share, spread)
