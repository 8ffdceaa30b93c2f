import json
import shutil

import pytest
from conftest import run_stats
from hypothesis import given, settings
from hypothesis import strategies as st

from ebmrl import cli
from ebmrl.data.copycheck import copies_reply, copy_score
from ebmrl.data.dataset import export_released, load_dataset_profiles, load_split
from ebmrl.data.split import split_by_session
from ebmrl.frame_store import ShardedFrameStore
from ebmrl.schema import Sample, Turn, load_released


def _params(tmp_path, demo_store, demo_data, extra=None, **synth):
    annotations = tmp_path / "annotate"
    annotations.mkdir(exist_ok=True)
    (annotations / "annotations.jsonl").write_text(
        "".join(
            json.dumps({"clip_id": c.clip_id, "description": "Two figures stand in a dim street."})
            + "\n"
            for c in demo_store["clips"]
        )
    )
    section = {
        "ingest": str(demo_store["ingest"]),
        "annotations": str(annotations),
        "profiles": str(demo_data["profiles"]),
        "out": str(tmp_path / "dataset"),
        "cache": str(tmp_path / "cache"),
        "test_fraction": 0.3,
        **synth,
    }
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"synthesize": section, **(extra or {})}))
    return path


def test_raw_lines_keeps_film_lines_and_traces_split_by_session(tmp_path, demo_store, demo_data):
    params = _params(tmp_path, demo_store, demo_data)
    assert cli.main(["--params", str(params), "synthesize"]) == 0
    out = tmp_path / "dataset"
    train, test = load_split(out, "train"), load_split(out, "test")
    imported = demo_store["result"].samples
    assert sorted(s.sample_id for s in train + test) == sorted(s.sample_id for s in imported)
    assert train and test and not {s.session_id for s in train} & {s.session_id for s in test}
    assert not {s.clip_id for s in train} & {s.clip_id for s in test}
    store = ShardedFrameStore.open(demo_store["frames"])
    assert {s.clip_id for s in train + test} <= set(store.clip_ids())
    assert all(s.has_trace for s in train + test)  # the demo's grounded traces are kept
    # The ground truth of each clip travels with its samples (for perception_accuracy).
    from pathlib import Path

    from ebmrl.demo import load_scenes
    from ebmrl.scene_words import scene_attributes

    scenes = {s.clip_id: scene_attributes(s) for s in load_scenes(demo_data["scenes"])}
    assert all(s.scene_attributes.known() == scenes[Path(s.video).stem] for s in train + test)
    assert load_dataset_profiles(out).get("Mira Vale") is not None
    import datasets

    loaded = datasets.load_dataset("json", data_files={"train": str(out / "train.jsonl")})["train"]
    assert len(loaded) == len(train) and loaded[0]["clip_id"] == train[0].clip_id
    released = export_released(out, tmp_path / "released")
    again = load_released(released["train"])
    assert [s.target for s in again] == [s.target for s in train]
    assert [s.process for s in again] == [s.process for s in train]
    assert [s.scene_attributes for s in again] == [s.scene_attributes for s in train]


def test_a_given_trace_that_copies_the_reply_is_removed_and_reported(
    tmp_path, demo_store, demo_data
):
    ingest_copy = tmp_path / "ingest"
    shutil.copytree(demo_store["ingest"], ingest_copy)
    rows = [json.loads(x) for x in (ingest_copy / "samples.jsonl").read_text().splitlines()]
    reply = rows[0]["target"]["utterance"]
    rows[0]["process"] = Sample.trace("I see the street.", f"I will say: {reply}")
    (ingest_copy / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = _params(tmp_path, {**demo_store, "ingest": ingest_copy}, demo_data)
    assert cli.main(["--params", str(params), "synthesize"]) == 0
    report = json.loads((tmp_path / "dataset" / "report.json").read_text())
    assert report["dropped"] == {"given trace copies the reply: trace removed": 1}
    samples = load_split(tmp_path / "dataset", "train") + load_split(tmp_path / "dataset", "test")
    assert sum(not s.has_trace for s in samples) == 1


def test_copy_score():
    reply = "Fire on the ground, get back now."
    assert copy_score(f"I think: {reply}", reply) == 1.0
    assert copy_score("The street is calm and blue.", reply) == 0.0
    assert 0 < copy_score("there is fire on the ground here", reply) < 1
    assert copies_reply("anything", reply, 0.0) and not copies_reply("calm", reply, 0.5)
    assert copy_score("x", "") == 0.0 and copy_score("Run!", "Run!") == 1.0


def _sample(i, session, clip):
    return Sample(
        sample_id=i,
        session_id=session,
        user="u",
        assistant="a",
        dialogue=[],
        target=Turn(speaker="a", utterance="x"),
        video="v.mp4",
        clip_id=clip,
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 12)), min_size=2, max_size=60),
    st.floats(0.05, 0.9),
    st.integers(0, 5),
)
def test_split_never_puts_a_session_or_clip_on_both_sides(pairs, fraction, seed):
    samples = [_sample(i, f"s{s}", f"c{c}") for i, (s, c) in enumerate(pairs)]
    train, test = split_by_session(samples, fraction, seed)
    assert len(train) + len(test) == len(samples) and train
    assert not {s.session_id for s in train} & {s.session_id for s in test}
    assert not {s.clip_id for s in train} & {s.clip_id for s in test}
    assert split_by_session(samples, fraction, seed) == (train, test)  # deterministic


def test_split_sizes_follow_the_fraction():
    samples = [_sample(i, f"s{i % 20}", f"c{i}") for i in range(200)]
    train, test = split_by_session(samples, 0.1, 0)
    assert 10 <= len(test) <= 30 and len({s.session_id for s in test}) >= 1


@pytest.mark.slow
def test_llm_dialogues_and_traces_over_http_are_structured_and_cached(
    tmp_path, demo_store, demo_data, chat_server, capsys
):
    server = chat_server(fail_rate=0.2, seed=5)
    backend = {
        "kind": "http",
        "base_url": server.url,
        "model": "tiny-vlm",
        "concurrency": 3,
        "max_retries": 8,
        "backoff_s": 0.001,
        "max_backoff_s": 0.01,
    }
    params = _params(
        tmp_path,
        demo_store,
        demo_data,
        mode="llm",
        samples_per_clip=2,
        history_turns=2,
        backend=backend,
        generation={"max_tokens": 8, "temperature": 1.0},
    )
    assert cli.main(["--params", str(params), "synthesize"]) == 0
    out = tmp_path / "dataset"
    samples = load_split(out, "train") + load_split(out, "test")
    report = json.loads((out / "report.json").read_text())
    assert len(samples) + sum(report["dropped"].values()) == 2 * len(demo_store["clips"])
    stats = run_stats(capsys.readouterr().out, "synthesize")
    assert stats["client"]["retries"] == server.stats()["injected_failures"] > 0
    clips = {c.clip_id: c for c in demo_store["clips"]}
    strategies = set()
    for s in samples:
        strategies.add(s.extra["strategy"])
        assert (
            s.clip_id in clips
            and s.video == clips[s.clip_id].uri
            and s.generation_type == "llm_api"
        )
        assert s.target.speaker == s.assistant and s.dialogue[-1].speaker == s.user
        assert s.has_trace and s.solution == f"<answer>{s.target.utterance}</answer>"
        expected_turns = 3 if s.extra["strategy"] == "join" else 1
        assert len(s.dialogue) == expected_turns
        assert not copies_reply(f"{s.perception} {s.think}", s.target.utterance, 0.5)
    assert strategies == {"join", "ask"}
    requests = server.stats()["requests"]
    first_report = (out / "report.json").read_bytes()
    assert cli.main(["--params", str(params), "synthesize"]) == 0  # all cached: no request
    assert server.stats()["requests"] == requests
    assert load_split(out, "train") + load_split(out, "test") == samples
    # The run's statistics differ (all cache hits now), the outputs do not.
    assert run_stats(capsys.readouterr().out, "synthesize")["client"]["cache_hits"] > 0
    assert (out / "report.json").read_bytes() == first_report


@pytest.mark.slow
def test_copy_check_drops_and_reports(tmp_path, demo_store, demo_data, chat_server, capsys):
    server = chat_server()
    backend = {"kind": "http", "base_url": server.url, "model": "tiny-vlm"}
    params = _params(
        tmp_path,
        demo_store,
        demo_data,
        mode="llm",
        samples_per_clip=1,
        history_turns=0,
        copy_threshold=0.0,
        max_attempts=2,
        backend=backend,
        generation={"max_tokens": 4, "temperature": 1.0},
    )
    # threshold 0: every trace is a copy: nothing to write is bad input (exit 2)
    assert cli.main(["--params", str(params), "synthesize"]) == 2
    assert "trace copies the reply" in capsys.readouterr().err
    # 1 opener + 1 reply + 2 attempts x (perception + think) per clip
    assert server.stats()["completed"] == len(demo_store["clips"]) * 6


def test_generate_missing_traces_for_film_lines(
    tmp_path, demo_store, demo_data, tiny_models, capsys
):
    ingest_copy = tmp_path / "ingest"
    shutil.copytree(demo_store["ingest"], ingest_copy)
    rows = [json.loads(x) for x in (ingest_copy / "samples.jsonl").read_text().splitlines()]
    rows[0]["process"] = None
    (ingest_copy / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = _params(
        tmp_path,
        {**demo_store, "ingest": ingest_copy},
        demo_data,
        traces="generate_missing",
        backend={"kind": "local", "model": str(tiny_models["vlm"])},
        generation={"max_tokens": 6, "temperature": 1.0},
    )
    assert cli.main(["--params", str(params), "synthesize"]) == 0
    report = json.loads((tmp_path / "dataset" / "report.json").read_text())
    assert report["traces_written"] == 1
    assert run_stats(capsys.readouterr().out, "synthesize")["client"]["completed"] == 2
    samples = load_split(tmp_path / "dataset", "train") + load_split(tmp_path / "dataset", "test")
    assert all(s.has_trace for s in samples)


@pytest.mark.parametrize(
    "bad", [{"mode": "nonsense"}, {"copy_threshold": 2}, {"backend": {"kind": "http"}}]
)
def test_bad_synthesize_params_are_named(tmp_path, bad, capsys):
    params = tmp_path / "p.yaml"
    params.write_text(json.dumps({"synthesize": bad}))
    assert cli.main(["--params", str(params), "synthesize"]) == 2
    assert "synthesize." in capsys.readouterr().err


@pytest.mark.slow
def test_llm_traces_are_written_in_the_tag_names_in_use(
    tmp_path, demo_store, demo_data, chat_server
):
    """With the authors' tags (the paper profile) a synthesized trace reads <vision>, as
    the released data does, so that a `released` SFT target matches the format reward."""
    server = chat_server(seed=3)
    backend = {"kind": "http", "base_url": server.url, "model": "tiny-vlm", "concurrency": 2}
    params = _params(
        tmp_path,
        demo_store,
        demo_data,
        extra={"tags": ["vision", "think", "answer"]},
        mode="llm",
        samples_per_clip=1,
        backend=backend,
        generation={"max_tokens": 8, "temperature": 1.0},
    )
    assert cli.main(["--params", str(params), "synthesize"]) == 0
    samples = load_split(tmp_path / "dataset", "train") + load_split(tmp_path / "dataset", "test")
    traced = [s for s in samples if s.has_trace]
    assert traced
    for s in traced:
        assert s.process.startswith("<vision>\n") and "<perception>" not in s.process
        assert "\n</vision>\n\n<think>\n" in s.process
