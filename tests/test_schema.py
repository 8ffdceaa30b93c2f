import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebmrl.schema import (
    Sample,
    SchemaError,
    dump_profiles,
    dump_released,
    load_profiles,
    load_released,
    parse_released,
)

FIXTURE = Path(__file__).parent / "fixtures" / "released_records.json"


def test_fixture_imports_with_vision_alias():
    first, second = load_released(FIXTURE)
    assert first.sample_id == 1 and first.session_id == "a1b2c3d4e5f60718"
    assert first.sample_order == 1 and first.series_total == 2 and first.sub_sample_type == 1
    assert first.perception.startswith("1. A tall figure")
    assert first.think.endswith("Mira protects first.")
    assert first.has_trace
    assert second.process is None and not second.has_trace
    assert second.sample_order == 3 and second.series_total == 4
    assert second.extra == {"future_field": {"kept": [1, 2, 3]}}
    assert second.dialogue == []


def test_round_trip_keeps_every_field_and_value(tmp_path):
    original = json.loads(FIXTURE.read_text())
    out = tmp_path / "out.json"
    dump_released(load_released(FIXTURE), out)
    assert json.loads(out.read_text()) == original
    # Field order follows the release too.
    assert list(json.loads(out.read_text())[0]) == list(original[0])


def test_jsonl_is_accepted(tmp_path):
    records = json.loads(FIXTURE.read_text())
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert [s.sample_id for s in load_released(path)] == [1, 2]


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda r: r.pop("target"), ["record 0", "problem_id=1", "missing field(s): target"]),
        (lambda r: r.update(dialogue="hi"), ["field dialogue"]),
        (lambda r: r.update(target={"speaker": "x"}), ["field target.utterance"]),
        (lambda r: r.update(session_id=17), ["field session_id"]),
        (
            lambda r: r["dialogue"].append({"speaker": "a", "utterance": "b", "mood": 1}),
            ["dialogue.1.mood"],
        ),
    ],
)
def test_bad_records_name_the_field(mutate, words):
    records = json.loads(FIXTURE.read_text())
    mutate(records[0])
    with pytest.raises(SchemaError) as info:
        parse_released(records, origin="fixture.json")
    for word in words:
        assert word in str(info.value)


def test_bad_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"problem_id": 1,')
    with pytest.raises(SchemaError, match="invalid JSON"):
        load_released(broken)
    obj = tmp_path / "obj.json"
    obj.write_text("[1, 2]")
    with pytest.raises(SchemaError, match="must be a JSON object"):
        load_released(obj)


def test_trace_builder_uses_our_tag_names():
    trace = Sample.trace(" sees ", " thinks ")
    assert trace.startswith("<perception>")
    sample = Sample(
        sample_id="x",
        session_id="s",
        user="u",
        assistant="a",
        dialogue=[],
        target={"speaker": "a", "utterance": "hi"},
        video="v.mp4",
        process=trace,
    )
    assert (sample.perception, sample.think) == ("sees", "thinks")


def test_public_release_samples_import(rp_sample_dir, tmp_path):
    for name in ("test_sample.json", "cot_sample.json"):
        path = rp_sample_dir / name
        samples = load_released(path)
        original = json.loads(path.read_text())
        assert len(samples) == len(original) > 0
        out = tmp_path / name
        dump_released(samples, out)
        assert json.loads(out.read_text()) == original
        for sample, record in zip(samples, original, strict=True):
            assert sample.target.utterance == record["target"]["utterance"]
            assert sample.source == record["data_source"]
    cot = load_released(rp_sample_dir / "cot_sample.json")
    assert all(s.has_trace for s in cot)
    assert "<vision>" in cot[0].process and cot[0].perception.startswith("1.")


def test_public_profiles_round_trip(rp_sample_dir, tmp_path):
    path = rp_sample_dir / "profiles.json"
    book = load_profiles(path)
    hermione = book.get("Hermione Granger", "Harry Potter")
    assert hermione is not None and hermione.personality
    assert isinstance(book.get("Harry Potter", "Harry Potter").relationships, list)
    assert book.get("Frodo", "The Lord of the Rings") is not None  # via movie alias
    assert book.get("user_fan", "Harry Potter").name == "user_fan"
    assert book.get("Faramir", "The Lord of the Ring") is None
    out = tmp_path / "profiles.json"
    dump_profiles(book, out)
    assert json.loads(out.read_text()) == json.loads(path.read_text())


# ----------------------------------------------------------------------- fuzzing
text = st.text(max_size=30)
turn = st.fixed_dictionaries({"speaker": text, "utterance": text})
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), text)


@st.composite
def released_record(draw):
    kind = draw(st.sampled_from([1, 2]))
    record = {
        "problem_id": draw(st.one_of(st.integers(), text)),
        "session_id": draw(text),
        "user": draw(text),
        "assistant": draw(text),
        "dialogue": draw(st.lists(turn, max_size=4)),
        "target": draw(turn),
        "video_path": draw(text),
    }
    optional = {
        "segment_part": text,
        f"sub_{kind}_sample_order": st.integers(),
        f"total_sub_{kind}_samples_in_session": st.integers(),
        "sub_sample_type": st.just(kind),
        "data_type": text,
        "data_source": text,
        "generation_type": text,
        "problem_type": text,
        "solution": text,
        "process": text,
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            record[key] = draw(st.one_of(strategy, st.none()))
    extras = draw(
        st.dictionaries(
            st.text(min_size=1, max_size=8).map(lambda k: f"x_{k}"), json_leaf, max_size=3
        )
    )
    record.update(extras)
    return record


@settings(max_examples=300, deadline=None)
@given(st.lists(released_record(), max_size=4))
@pytest.mark.slow
def test_fuzz_round_trip(records):
    samples = parse_released(records)
    assert [s.to_released() for s in samples] == records


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        json_leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)
        ),
        max_leaves=20,
    )
)
@pytest.mark.slow
def test_fuzz_arbitrary_json_never_crashes_the_importer(data):
    try:
        samples = parse_released(data if isinstance(data, list) else [data])
    except SchemaError:
        return
    assert all(isinstance(s, Sample) for s in samples)


def test_scene_attributes_round_trip_and_bad_ones_are_named():
    record = {
        "problem_id": 1, "session_id": "s", "user": "u", "assistant": "a", "dialogue": [],
        "target": {"speaker": "a", "utterance": "hi"}, "video_path": "v.mp4",
        "scene_attributes": {"background": "blue", "figures": 2, "danger": True},
    }  # fmt: skip
    sample = Sample.from_released(record)
    assert sample.scene_attributes.known() == {"background": "blue", "figures": 2, "danger": True}
    assert sample.to_released()["scene_attributes"] == record["scene_attributes"]
    assert (
        "scene_attributes"
        not in Sample.from_released(
            {k: v for k, v in record.items() if k != "scene_attributes"}
        ).to_released()
    )
    with pytest.raises(SchemaError, match="scene_attributes.figures"):
        Sample.from_released({**record, "scene_attributes": {"figures": "many"}})
    with pytest.raises(SchemaError, match="scene_attributes.colour"):
        Sample.from_released({**record, "scene_attributes": {"colour": "blue"}})


def test_trace_builder_writes_the_tag_names_in_use():
    from ebmrl.tags import AUTHORS_TAGS

    trace = Sample.trace(" sees ", " thinks ", AUTHORS_TAGS)
    assert trace == "<vision>\nsees\n</vision>\n\n<think>\nthinks\n</think>"
    sample = Sample(
        sample_id="x",
        session_id="s",
        user="u",
        assistant="a",
        dialogue=[],
        target={"speaker": "a", "utterance": "hi"},
        video="v.mp4",
        process=trace,
    )
    assert (sample.perception, sample.think) == ("sees", "thinks")  # read either way
