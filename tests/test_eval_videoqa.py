"""Zero-shot VideoQA: the standard formats, robust answer parsing, exact accuracies.

The fixtures (tests/fixtures/videoqa) ask about the demo clips, whose scenes are known;
scripted answerers make the expected accuracy known by construction.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_benchmark

from ebmrl.backends import GenerationClient
from ebmrl.eval.videoqa import AnnotationError, load_benchmark, nextqa_group
from ebmrl.eval.videoqa.formats import load_nextqa, pororo_video_stem
from ebmrl.eval.videoqa.parsing import parse_choice, parse_open, parse_yes_no
from ebmrl.eval.videoqa.scoring import FrameReader, answer_questions, summarize, vlm_answerer

FIXTURES = Path(__file__).parent / "fixtures" / "videoqa"


@pytest.fixture(scope="module")
def videos(demo_data):
    return demo_data["videos"]


@pytest.fixture(scope="module")
def reader():
    return FrameReader(count=4, max_pixels=100_352)


# ---------------------------------------------------------------------- loaders
def test_loaders_read_the_standard_formats(videos):
    anet = fixture_benchmark("activitynet_qa", videos)
    assert [i.answer for i in anet] == ["no", "yes", "no", "yes", "yes", "yes"]  # type 4 left out
    assert {i.kind for i in anet} == {"yes_no"} and anet[0].video.endswith("clip_0000.mp4")
    nextqa = fixture_benchmark("nextqa", videos)
    assert [(i.qid, i.answer, i.qtype) for i in nextqa][:2] == [
        ("9001_0", "C", "DC"),
        ("9002_0", "A", "TC"),
    ]
    assert nextqa[0].options == ("one", "two", "three", "four", "five")
    assert nextqa[0].video.endswith("clip_0001.mp4") and Path(nextqa[0].video).is_file()
    pororo = fixture_benchmark("pororoqa", videos)
    assert [i.answer for i in pororo] == ["B", "D", "C", "E"]
    assert all(Path(i.video).is_file() for i in anet + nextqa + pororo)
    assert len(fixture_benchmark("nextqa", videos, max_questions=2)) == 2


def test_open_answers_and_release_layouts(videos, tmp_path):
    from ebmrl.eval.videoqa.formats import load_activitynet_qa

    items = load_activitynet_qa(
        FIXTURES / "activitynet_qa/test_q.json",
        FIXTURES / "activitynet_qa/test_a.json",
        videos,
        yes_no_only=False,
    )
    assert items[-1].kind == "open" and items[-1].answer == "yellow" and items[-1].qtype == "color"
    assert (
        pororo_video_stem("Pororo_ENGLISH1_1_ep1", "12")
        == "Pororo_ENGLISH1_1/Pororo_ENGLISH1_1_ep1/12"
    )
    # Without a map, NExT-QA videos are <videos>/<video>.mp4 (missing here: reported later).
    plain = load_nextqa(FIXTURES / "nextqa/test.csv", tmp_path)
    assert plain[0].video == str(tmp_path / "9001.mp4")
    assert nextqa_group("CW") == "causal" and nextqa_group("TP") == "temporal"
    assert nextqa_group("DL") == "descriptive"


def test_bad_annotations_name_the_file_and_record(tmp_path, videos):
    csv = tmp_path / "bad.csv"
    csv.write_text("video,question,answer,qid,type,a0,a1,a2,a3\n1,q,0,0,DC,a,b,c,d\n")
    with pytest.raises(AnnotationError, match="missing column.*a4"):
        load_benchmark("nextqa", csv, videos)
    csv.write_text(
        "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
        "1,1,1,1,q,7,0,DC,a,b,c,d,e\n"
    )
    with pytest.raises(AnnotationError, match=r"bad.csv: line 2: answer index 7 outside 0..4"):
        load_benchmark("nextqa", csv, videos)
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps([{"video_name": "v", "question": "q?", "question_id": "q1"}]))
    answers = tmp_path / "a.json"
    answers.write_text("[]")
    with pytest.raises(AnnotationError, match="no answer for question_id 'q1'"):
        load_benchmark("activitynet_qa", questions, videos, answers=answers)
    with pytest.raises(AnnotationError, match="needs its answers"):
        load_benchmark("activitynet_qa", questions, videos)
    pororo = tmp_path / "p.json"
    pororo.write_text(json.dumps({"PororoQA": [{"video_name": "x_ep1", "question": "q"}]}))
    with pytest.raises(AnnotationError, match=r"PororoQA\[0\]: missing field 'answer0'"):
        load_benchmark("pororoqa", pororo, videos)
    with pytest.raises(AnnotationError, match="invalid JSON"):
        answers.write_text("{not json")
        load_benchmark("activitynet_qa", questions, videos, answers=answers)


# ---------------------------------------------------------------------- parsing
OPTIONS = ("one", "two", "three", "a black dog", "dog")


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(b)", "B"),
        ("<perception>x</perception><think>y</think><answer>C.</answer>", "C"),
        ("<answer>B) two</answer>", "B"),
        ("<answer>The answer is D</answer>", "D"),
        ("answer: (c)", "C"),
        ("option e.", "E"),
        ("three", "C"),
        ("<answer>I think it is two people.</answer>", "B"),
        ("a black dog", "D"),  # "dog" inside the longer option does not count twice
        ("the answer is a dog", "E"),  # "a" is an article here, not option A
        ("A or B", None),
        ("answer is A, not answer B", None),
        ("<think>x</think>", None),
        ("", None),
        ("one or two", None),
        ("<answer>F</answer>", None),  # no option F
    ],
)
def test_parse_choice(text, letter):
    assert parse_choice(text, OPTIONS) == letter


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Yes.", "yes"),
        ("<answer>no</answer>", "no"),
        ("<answer>There is no fire.</answer>", "no"),
        ("the answer is yes", "yes"),
        ("yes and no", None),
        ("maybe", None),
        ("<answer></answer>", None),
    ],
)
def test_parse_yes_no(text, answer):
    assert parse_yes_no(text) == answer


def test_parse_open():
    assert parse_open("<answer>The Yellow!</answer>") == "yellow"
    assert parse_open("<answer> </answer>") is None


# ---------------------------------------------------------------------- scoring
SCRIPT = {
    # ActivityNet-QA (gold: no yes no yes yes yes): 3 right, 1 wrong, 2 unparseable.
    "clip_0000_1": "<perception>A quiet street.</perception><think>No flames.</think><answer>No.</answer>",
    "clip_0001_1": "<answer>yes</answer>",
    "clip_0002_1": "<answer>Yes, it is bright.</answer>",
    "clip_0003_1": "I cannot tell.",
    "clip_0004_1": "yes",
    "clip_0005_1": "<answer>yes and no</answer>",
    # NExT-QA (gold: C A A D B D): 4 right (DC 1/2, TC 2/2, CW 0/1, DO 1/1), 1 unparseable.
    "9001_0": "<answer>(C)</answer>",
    "9002_0": "<answer>to the left</answer>",
    "9004_0": "<answer>B</answer>",
    "9000_0": "<answer>The answer is D.</answer>",
    "9005_0": "<answer>A or B</answer>",
    "9003_0": "<answer>D) standing still</answer>",
    # PororoQA (gold: B D C E): 2 right, 1 wrong, 1 unparseable.
    "lantern_ep1_q1": "<answer>A row of orange flames.</answer>",
    "lantern_ep1_q2": "<answer>d</answer>",
    "lantern_ep1_q3": "<answer>It is dark.</answer>",
    "lantern_ep1_q4": "",
}


def scripted(item, frames):
    assert frames.ndim == 4 and frames.shape[0] == 4 and frames.dtype == np.uint8
    return SCRIPT[item.qid]


def test_accuracy_is_exact_on_the_fixtures(videos, reader):
    anet = summarize(
        answer_questions(fixture_benchmark("activitynet_qa", videos), "s", scripted, reader)
    )
    assert anet == {
        "questions": 6,
        "scored": 6,
        "correct": 3,
        "accuracy": 0.5,
        "unparseable": 2,
        "not_scored": 0,
        # The authors' exact match: "No." and "Yes, it is bright." are wrong, the bare
        # "yes" without a block is right by their last-yes/no fallback.
        "authors": {"correct": 2, "accuracy": 0.333333, "no_answer_block": 2},
    }
    results = answer_questions(
        fixture_benchmark("nextqa", videos), "s", scripted, reader, concurrency=3
    )
    nextqa = summarize(results, nextqa_group)
    assert (nextqa["correct"], nextqa["scored"], nextqa["unparseable"]) == (4, 6, 1)
    assert nextqa["accuracy"] == round(4 / 6, 6)
    assert {t: v["accuracy"] for t, v in nextqa["by_type"].items()} == {
        "CW": 0.0,
        "DC": 0.5,
        "DO": 1.0,
        "TC": 1.0,
    }
    assert {g: (v["correct"], v["scored"]) for g, v in nextqa["by_group"].items()} == {
        "causal": (0, 1),
        "descriptive": (2, 3),
        "temporal": (2, 2),
    }
    pororo = summarize(
        answer_questions(fixture_benchmark("pororoqa", videos), "s", scripted, reader)
    )
    assert (pororo["correct"], pororo["scored"], pororo["unparseable"]) == (2, 4, 1)
    by_qid = {r.qid: r for r in results}
    assert by_qid["9002_0"].prediction == "A" and by_qid["9002_0"].from_block
    assert by_qid["9005_0"].prediction is None and not by_qid["9005_0"].correct


def flames(frames: np.ndarray) -> bool:
    """The demo's danger cue: orange flames along the bottom rows of the frame."""
    bottom = frames[:, -4:].reshape(-1, 3).astype(int)
    orange = (bottom[:, 0] > 200) & (bottom[:, 2] < 90) & (bottom[:, 1] > 80)
    return orange.mean() > 0.2


def test_the_answerer_sees_the_right_clip(videos, reader):
    """An answerer that reads the frames gets the fire questions right: frames come from
    each question's own video (decoded by our video module)."""
    items = [i for i in fixture_benchmark("activitynet_qa", videos) if "fire" in i.question]

    def look(item, frames):
        return f"<answer>{'yes' if flames(frames) else 'no'}</answer>"

    summary = summarize(answer_questions(items, "eyes", look, reader))
    assert (summary["scored"], summary["correct"]) == (3, 3)


def test_missing_and_broken_videos_are_not_scored_and_counted(tmp_path, videos, reader):
    (tmp_path / "clip_0001.mp4").write_bytes(b"not a video")
    questions = tmp_path / "q.json"
    questions.write_text(
        json.dumps(
            [
                {"video_name": "clip_9999", "question": "is it?", "question_id": "gone"},
                {"video_name": "clip_0001", "question": "is it?", "question_id": "broken"},
            ]
        )
    )
    answers = tmp_path / "a.json"
    answers.write_text(
        json.dumps([{"question_id": q, "answer": "yes", "type": 3} for q in ("gone", "broken")])
    )
    items = load_benchmark("activitynet_qa", questions, tmp_path, answers=answers)
    results = answer_questions(items, "s", lambda item, frames: "yes", reader)
    assert [r.status for r in results] == ["not_scored", "not_scored"]
    assert "file not found" in results[0].reason and "cannot decode" in results[1].reason
    summary = summarize(results)
    assert summary["not_scored"] == 2 and summary["scored"] == 0 and summary["accuracy"] == 0.0
    assert summary["not_scored_reasons"] == {"video unreadable": 2}


@pytest.mark.slow
def test_the_tiny_vlm_answers_through_the_real_path(videos, tiny_vlm_backend, tmp_path):
    from ebmrl.backends import ResponseCache

    items = fixture_benchmark("nextqa", videos)
    cache = ResponseCache(tmp_path / "responses.jsonl")
    client = GenerationClient(tiny_vlm_backend, cache)
    results = answer_questions(items, "tiny", vlm_answerer(client, 24), FrameReader(4, 100_352))
    assert [r.status for r in results] == ["scored"] * 6
    summary = summarize(results)
    parsed = [r for r in results if r.prediction is not None]
    assert summary["unparseable"] == 6 - len(parsed)
    assert summary["correct"] == sum(
        r.prediction == i.answer for r, i in zip(results, items, strict=True)
    )
    assert client.stats.completed == 6
    # Greedy and cached: a rerun regenerates nothing and gives the same text.
    again = answer_questions(items, "tiny", vlm_answerer(client, 24), FrameReader(4, 100_352))
    assert client.stats.completed == 6 and client.stats.cache_hits == 6
    assert [r.text for r in again] == [r.text for r in results]
