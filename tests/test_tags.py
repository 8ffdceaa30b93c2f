import re
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ebmrl.tags import (
    AUTHORS_TAGS,
    DEFAULT_TAGS,
    TagNames,
    first_block,
    ordered_blocks,
    parse,
    parse_roles,
    strip_blocks,
    tag_names,
)

FULL = "<perception> a dim street </perception>\n<think>be careful</think>\n<answer>Run!</answer>"


def test_well_formed_output():
    got = parse(FULL)
    assert (got.perception, got.think, got.answer) == ("a dim street", "be careful", "Run!")


def test_missing_tag_is_none():
    got = parse("<think>x</think>")
    assert got.perception is None and got.answer is None and got.think == "x"


def test_first_block_wins_when_repeated():
    assert parse("<answer>one</answer><answer>two</answer>").answer == "one"


def test_a_block_runs_from_the_first_opener_to_the_first_closer_after_it():
    # The authors' re.search(r"<answer>(.*?)</answer>", DOTALL), not the innermost block.
    assert parse("<answer>never closed").answer is None
    assert parse("<answer>open <answer>closed</answer>").answer == "open <answer>closed"
    assert parse("<think>outer <think>inner</think> tail</think>").think == "outer <think>inner"


def test_stray_closing_tag_before_block():
    assert parse("</answer> noise <answer>yes</answer>").answer == "yes"


def test_empty_block_is_empty_string_not_none():
    assert parse("<answer>  </answer>").answer == ""


def test_vision_alias_for_perception():
    assert parse("<vision>release format</vision>").perception == "release format"
    assert parse("<vision>a</vision><perception>b</perception>").perception == "b"
    assert parse("<perception>ours</perception>", ("vision",)).vision == "ours"


def test_roles_whatever_the_tag_names():
    text = "<vision>v</vision><think>t</think><answer>a</answer>"
    got = parse_roles(text, AUTHORS_TAGS, aliases={})
    assert (got.perception, got.think, got.answer) == ("v", "t", "a")
    assert parse_roles(text, DEFAULT_TAGS, aliases={}).perception is None
    assert tag_names(["vision", "think", "answer"]) == AUTHORS_TAGS == ("vision", "think", "answer")
    assert tag_names(None) == DEFAULT_TAGS == TagNames()
    with pytest.raises(ValueError, match="three names"):
        tag_names(["a", "b"])


def test_custom_tags_and_item_access():
    got = parse("<a>1</a><b>2</b>", tags=("a", "b"))
    assert got.a == "1" and got["b"] == "2" and got.get("c", "z") == "z"
    assert got.as_dict() == {"a": "1", "b": "2"}


def test_unicode_and_multiline():
    got = parse("<answer>\n  ¡Cuidado! 火が広がっている 🔥\n</answer>")
    assert got.answer == "¡Cuidado! 火が広がっている 🔥"


def test_non_string_inputs_do_not_raise():
    assert parse(None).answer is None
    assert parse(b"<answer>bytes \xff</answer>").answer == "bytes \ufffd"
    assert parse(12345).answer is None
    chat = [{"role": "assistant", "content": "<answer>chat</answer>"}]
    assert parse(chat).answer == "chat"


def test_one_megabyte_of_noise_is_fast():
    noise = ("<answer" + "x" * 97 + "</think>") * 10_000
    started = time.perf_counter()
    got = parse(noise + "<answer>end</answer>")
    assert got.answer == "end"
    assert time.perf_counter() - started < 1.0


def test_many_unmatched_openers_stay_linear():
    text = "<think>" * 200_000 + "</think>"
    started = time.perf_counter()
    assert parse(text).think == "<think>" * 199_999
    assert time.perf_counter() - started < 1.0


def test_many_stray_closers_stay_linear():
    text = "</answer>" * 200_000 + "<answer>ok</answer>"
    started = time.perf_counter()
    assert parse(text).answer == "ok"
    assert time.perf_counter() - started < 1.0


def test_strip_blocks_keeps_only_free_text():
    assert strip_blocks("<perception>p</perception> Hello <think>t</think> there") == "Hello there"
    assert strip_blocks("<answer>unclosed words") == "unclosed words"


tag_soup = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "<perception>",
                "</perception>",
                "<think>",
                "</think>",
                "<answer>",
                "</answer>",
                "<vision>",
                "</vision>",
                "<",
                ">",
                "/",
            ]
        ),
        st.text(max_size=20),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(tag_soup)
def test_parse_never_raises_and_blocks_have_no_own_closing_tag(text):
    assert parse(text) is not None  # with the <vision> alias
    got = parse(text, aliases={})
    for name in ("perception", "think", "answer"):
        value = getattr(got, name)
        assert value is None or isinstance(value, str)
        if value is not None:
            assert value == value.strip()
            assert f"</{name}>" not in value  # an opener may be inside (first to first)
            assert value in text


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=200).filter(lambda s: "<" not in s), st.text(max_size=50), st.text(max_size=50)
)
def test_any_inner_text_round_trips(perception, prefix, suffix):
    text = (
        f"{prefix.replace('<', '')}<perception>{perception}</perception>{suffix.replace('<', '')}"
    )
    assert parse(text).perception == perception.strip()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500))
def test_binary_junk(blob):
    got = parse(blob)
    assert got.answer is None or isinstance(got.answer, str)
    assert isinstance(strip_blocks(blob), str)


# ------------------------------------------- the authors' regular expressions, fuzzed
PIECES = [
    "<vision>",
    "</vision>",
    "<perception>",
    "</perception>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<",
    ">",
    "/",
    "x",
    " ",
    "\n",
    "<b>",
]
tag_text = st.lists(st.sampled_from(PIECES), max_size=24).map("".join)


def regex_block(text, tag):
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return match.group(1) if match else None


def regex_spans(text, tags):
    pattern = r"[^<]*".join(rf"(<{t}>(.*?)</{t}>)" for t in tags)
    match = re.search(pattern, text, re.DOTALL)
    if not match:
        return None
    return [
        (match.start(2 * i + 1), match.start(2 * i + 2), match.end(2 * i + 2), match.end(2 * i + 1))
        for i in range(len(tags))
    ]


@settings(max_examples=600, deadline=None)
@given(tag_text)
@example("<answer>a<answer>b</answer>c</answer>")
@pytest.mark.slow
def test_first_block_is_the_authors_regex(text):
    for tag in ("vision", "perception", "think", "answer"):
        assert first_block(text, tag) == regex_block(text, tag)


@settings(max_examples=1500, deadline=None)
@given(tag_text, st.sampled_from([AUTHORS_TAGS, DEFAULT_TAGS]), st.integers(1, 3))
@example("<vision>a</vision><think></vision> <think>b</think>", AUTHORS_TAGS, 2)
@example("<vision>a</vision>x<b><vision>c</vision><think>t</think>", AUTHORS_TAGS, 2)
@pytest.mark.slow
def test_ordered_blocks_are_the_authors_regex_search(text, tags, n):
    spans = ordered_blocks(text, tags[:n])
    expected = regex_spans(text, tags[:n])
    assert (None if spans is None else [tuple(s) for s in spans]) == expected


def test_ordered_blocks_stay_linear_on_pathological_input():
    text = "<vision></vision>" * 50_000 + "<think>" * 50_000
    started = time.perf_counter()
    assert ordered_blocks(text, AUTHORS_TAGS[:2]) is None
    assert time.perf_counter() - started < 1.0
