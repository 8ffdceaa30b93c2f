import time

from hypothesis import given, settings
from hypothesis import strategies as st

from ebmrl.tags import parse, strip_blocks

FULL = "<perception> a dim street </perception>\n<think>be careful</think>\n<answer>Run!</answer>"


def test_well_formed_output():
    got = parse(FULL)
    assert (got.perception, got.think, got.answer) == ("a dim street", "be careful", "Run!")


def test_missing_tag_is_none():
    got = parse("<think>x</think>")
    assert got.perception is None and got.answer is None and got.think == "x"


def test_first_block_wins_when_repeated():
    assert parse("<answer>one</answer><answer>two</answer>").answer == "one"


def test_unclosed_block_is_none_and_later_block_found():
    assert parse("<answer>never closed").answer is None
    assert parse("<answer>open <answer>closed</answer>").answer == "closed"


def test_nested_same_tag_takes_innermost_well_formed():
    assert parse("<think>outer <think>inner</think> tail</think>").think == "inner"


def test_stray_closing_tag_before_block():
    assert parse("</answer> noise <answer>yes</answer>").answer == "yes"


def test_empty_block_is_empty_string_not_none():
    assert parse("<answer>  </answer>").answer == ""


def test_vision_alias_for_perception():
    assert parse("<vision>release format</vision>").perception == "release format"
    assert parse("<vision>a</vision><perception>b</perception>").perception == "b"


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
    assert parse(text).think == ""
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
def test_parse_never_raises_and_blocks_have_no_own_tags(text):
    assert parse(text) is not None  # with the <vision> alias
    got = parse(text, aliases={})
    for name in ("perception", "think", "answer"):
        value = getattr(got, name)
        assert value is None or isinstance(value, str)
        if value is not None:
            assert value == value.strip()
            assert f"<{name}>" not in value and f"</{name}>" not in value
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
