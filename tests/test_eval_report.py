"""The static HTML report and its SVG charts: complete, escaped, and offline."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import ink, no_external_resources, screenshot

from ebmrl.eval import report, svg
from ebmrl.eval.frame_samples import jpeg_data_url, judge_frames
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


def learning_report_data() -> dict:
    """The demo's report: tiny models, synthetic clips, perception against the ground truth."""
    data = report_data()
    data["systems"] = ["base", "sft", "grpo"]
    data["about"] = {"tiny_models": ["models/tiny/qwen2_5_vl"], "tiny_judge": True,
                     "synthetic_clips": 4}  # fmt: skip
    data["info"]["judge"] = "models/tiny/qwen2_5_vl"
    by_attribute = {
        "background": {"correct": 0.5, "wrong": 0.25},
        "danger": {"correct": 1.0, "wrong": 0.0},
    }
    data["auto"] = {
        "base": {"perception_accuracy": 0.0, "perception_hallucinated": 0.0, "perception_scored": 8,
                 "clip_reward": 0.0, "clipscore": 0.0, "format_score": -5.0, "bertscore_f1": 0.0},
        "sft": {"perception_accuracy": 0.41, "perception_hallucinated": 0.45, "perception_scored": 8,
                "clip_reward": 0.05, "clipscore": 0.2, "format_score": 2.6, "bertscore_f1": 0.5,
                "perception_by_attribute": by_attribute},
        "grpo": {"perception_accuracy": 0.52, "perception_hallucinated": 0.33, "perception_scored": 8,
                 "clip_reward": 0.16, "clipscore": 0.4, "format_score": 3.1, "bertscore_f1": 0.55,
                 "perception_by_attribute": by_attribute},
    }  # fmt: skip
    return data


def test_the_demo_report_says_what_it_is_and_shows_what_training_changed():
    html = render_report(learning_report_data())
    # The first section after the title: what the demo is and is not.
    assert html.index("id='about'") < html.index("id='learning'") < html.index("id='summary'")
    assert "tiny models built on this machine" in html and "4 synthetic" in html
    assert "not a measure of role-play quality" in html
    assert "id='perception'" in html and "id='stage-curves'" in html
    assert "<td class='best'>0.52</td>" in html  # the best perception accuracy is marked
    assert "0.50 <span class='small wrong'>(0.25 wrong)</span>" in html
    # The judge section: a tiny model, and how to use a real one.
    assert "The judge here is a tiny model built for the demo" in html
    assert "--judge-url https://HOST/v1" in html and "kind: http" in html
    curves = ET.fromstring(html.split("id='stage-curves'>")[1].split("</div>")[0])
    lines = curves.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == len(report.STAGE_CURVES)
    assert all(len(line.get("points").split()) == 3 for line in lines)  # base, sft, grpo
    assert no_external_resources(html) == [] and "<script" not in html
    plain = render_report(report_data())  # no ground truth, no tiny models: none of it
    assert "id='about'" not in plain and "id='perception'" not in plain


def test_the_new_report_section_renders_in_headless_chromium(tmp_path):
    """The top of the page (what the demo is, perception and reward curves per system)
    as a real browser draws it: the notice box and the curves are on screen."""
    from PIL import Image

    page = tmp_path / "index.html"
    page.write_text(render_report(learning_report_data()), encoding="utf-8")
    png = tmp_path / "top.png"
    screenshot(page, png, tmp_path / "profile", height=1100)
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)

    def share(rgb, tolerance=6):
        return float((np.abs(pixels - np.array(rgb)).max(axis=2) <= tolerance).mean())

    assert share((0xFF, 0xF8, 0xE1)) > 0.01  # the "what this demo is" box (.about)
    assert share((0x4C, 0x78, 0xA8), 30) > 1e-4  # the first curve's stroke (svg.PALETTE[0])
    assert share((0xF5, 0x85, 0x18), 30) > 1e-4  # the second curve's stroke
    top_ink, spread = ink(png)
    assert top_ink > 0.05 and spread > 20, (top_ink, spread)


# ---------------------------------------------------------------- the report stage
def stage_inputs(tmp_path, demo_store, **report):
    """evaluate's results.json (``report_data`` without what the report stage adds), the
    VideoQA folder, the GRPO log, a params file whose report section points at them."""
    import json

    import yaml

    tmp_path.mkdir(parents=True, exist_ok=True)
    data = report_data()
    videoqa, history = data.pop("videoqa"), data.pop("reward_history")
    clip_id = demo_store["clips"][0].clip_id
    for sample in data["samples"]:
        sample.pop("frames")
        sample["clip_id"] = clip_id if sample["clip_problem"] is None else "zzz"
    (tmp_path / "results.json").write_text(json.dumps(data))
    (tmp_path / "videoqa").mkdir()
    (tmp_path / "videoqa" / "nextqa.json").write_text(json.dumps(videoqa["nextqa"]))
    (tmp_path / "grpo_log.json").write_text(json.dumps(history))
    section = {
        "results": str(tmp_path / "results.json"),
        "frames": str(demo_store["frames"]),
        "frames_per_sample": 3,
        "videoqa_metrics": str(tmp_path / "videoqa"),
        "training_log": str(tmp_path / "grpo_log.json"),
        "out": str(tmp_path / "out" / "index.html"),
        **report,
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"report": section}))
    return path, tmp_path / "out" / "index.html"


def test_the_report_stage_puts_results_videoqa_curves_and_frames_on_one_page(
    tmp_path, demo_store, capsys
):
    from ebmrl.cli import main

    params, page = stage_inputs(tmp_path, demo_store)
    assert main(["--params", str(params), "report", "--no-tracking"]) == 0
    html = page.read_text()
    assert no_external_resources(html) == []
    assert "Zero-shot VideoQA" in html and "nextqa" in html and "GRPO reward curves" in html
    assert html.count("data:image/jpeg;base64,") == 3  # the readable clip's thumbnails
    assert "clip zzz unreadable: gone" in html  # evaluate's reason for the other sample
    assert "1 VideoQA table(s), reward curves" in capsys.readouterr().out
    first = page.read_bytes()
    assert main(["--params", str(params), "report", "--no-tracking"]) == 0
    assert page.read_bytes() == first  # nothing new computed: the same bytes


def test_the_report_stage_without_videoqa_or_curves_and_a_missing_input(tmp_path, demo_store):
    from ebmrl.cli import main

    params, page = stage_inputs(
        tmp_path, demo_store, videoqa_metrics=None, training_log=None, frames_per_sample=0
    )
    assert main(["--params", str(params), "report", "--no-tracking"]) == 0
    html = page.read_text()
    assert "Zero-shot VideoQA" not in html and "GRPO reward curves" not in html
    assert "data:image/jpeg" not in html

    missing = tmp_path / "nowhere"
    params, page = stage_inputs(tmp_path / "b", demo_store, videoqa_metrics=str(missing))
    completed = subprocess_cli(params)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        f"error: report.videoqa_metrics does not exist (null: no VideoQA tables): {missing}"
    ]
    assert not page.exists()


def subprocess_cli(params):
    import subprocess
    import sys
    from pathlib import Path

    ebmrl = Path(sys.executable).parent / "ebmrl"
    return subprocess.run(
        [str(ebmrl), "--params", str(params), "report", "--no-tracking"],
        capture_output=True,
        text=True,
    )


def test_keys_that_moved_to_the_report_section_say_where():
    from ebmrl.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"report_frames moved to the report section"):
        validate({"evaluate": {"report_frames": 4}})
    with pytest.raises(ConfigError, match=r"report\.videoqa_metrics"):
        validate({"evaluate": {"videoqa_metrics": "metrics/videoqa"}})
