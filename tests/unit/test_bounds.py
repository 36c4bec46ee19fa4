"""The bounds every untrusted input keeps (DESIGN §11): control characters found wherever they hide
in a JSON body, nesting depth, the longest duration, how many labels."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.bounds import CONTROL, DEPTH_MAX, check_depth, check_no_control
from shared.errors import Invalid
from shared.ids import LABELS_MAX, check_labels
from shared.times import DURATION_MAX, parse_duration

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def has_control(value: Any) -> bool:
    if isinstance(value, str):
        return CONTROL.search(value) is not None
    if isinstance(value, dict):
        return any(has_control(k) or has_control(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_control(v) for v in value)
    return False


@given(json_values)
def test_a_body_is_refused_exactly_when_some_string_or_key_holds_a_control_character(value: Any) -> None:
    data = msgspec.json.encode({"body": value})
    if has_control(value):
        with pytest.raises(Invalid) as info:
            check_no_control(data)
        assert info.value.field is not None
        assert info.value.field.startswith("body")
    else:
        check_no_control(data)


def test_tab_newline_and_carriage_return_are_text_not_control() -> None:
    check_no_control(msgspec.json.encode({"reason": "line one\n\tline two\r\n"}))


def test_the_field_is_named_by_its_path() -> None:
    with pytest.raises(Invalid) as info:
        check_no_control(msgspec.json.encode({"config": {"db": ["ok", "bad\x00"]}}))
    assert info.value.field == "config.db[1]"


def test_depth() -> None:
    value: Any = 1
    for _ in range(DEPTH_MAX):
        value = {"a": value}
    check_depth(value, "config")
    with pytest.raises(Invalid) as info:
        check_depth([value], "config")
    assert info.value.field == "config"


@pytest.mark.parametrize("text", ["99999999999999h", "367d", str(DURATION_MAX + 1), "8785h", float("nan")])
def test_durations_have_a_longest(text: str | float) -> None:
    with pytest.raises(Invalid):
        parse_duration(text, "bake")


def test_the_longest_duration_is_accepted() -> None:
    assert parse_duration("8784h") == DURATION_MAX


def test_label_count() -> None:
    check_labels({f"k{i}": "v" for i in range(LABELS_MAX)})
    with pytest.raises(Invalid):
        check_labels({f"k{i}": "v" for i in range(LABELS_MAX + 1)})
    with pytest.raises(Invalid):
        check_labels({"k": "a\x00b"})
