"""Label selectors: every form parses and matches as documented; every error names the position."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import Invalid
from shared.selectors import EVERYTHING, Requirement, Selector, SelectorError, matches, parse

LABELS = {"tier": "edge", "line": "3", "vendor": "acme"}


@pytest.mark.parametrize(
    ("text", "requirements"),
    [
        ("", ()),
        ("   ", ()),
        ("tier=edge", (Requirement("tier", "=", ("edge",)),)),
        ("tier==edge", (Requirement("tier", "=", ("edge",)),)),
        ("tier = edge", (Requirement("tier", "=", ("edge",)),)),
        ("tier!=edge", (Requirement("tier", "!=", ("edge",)),)),
        ("tier=", (Requirement("tier", "=", ("",)),)),
        ("tier in (edge,core)", (Requirement("tier", "in", ("edge", "core")),)),
        ("tier in(edge , core ,edge)", (Requirement("tier", "in", ("edge", "core")),)),
        ("tier notin (edge)", (Requirement("tier", "notin", ("edge",)),)),
        ("tier", (Requirement("tier", "exists"),)),
        ("!tier", (Requirement("tier", "!exists"),)),
        ("! tier", (Requirement("tier", "!exists"),)),
        ("site in (a,b),tier=edge", (Requirement("site", "in", ("a", "b")), Requirement("tier", "=", ("edge",)))),
        ("kind=gateway, !legacy ,example.com/role=x", (Requirement("kind", "=", ("gateway",)),
                                                       Requirement("legacy", "!exists"),
                                                       Requirement("example.com/role", "=", ("x",)))),
        ("v=1.2.3-rc_1:build", (Requirement("v", "=", ("1.2.3-rc_1:build",)),)),
    ],
)
def test_every_form_parses(text: str, requirements: tuple[Requirement, ...]) -> None:
    selector = parse(text)
    assert selector.requirements == requirements
    assert parse(str(selector)) == selector  # the canonical form parses back to itself


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        ("Tier=edge", 0, "not a label key"),
        ("tier=edge,", 10, "expected a label key"),
        (",tier", 0, "expected a label key"),
        ("tier in (a,", 11, "expected a value"),
        ("tier in (a", 10, "expected ')'"),
        ("tier in ()", 9, "expected a value"),
        ("tier in a", 8, "expected '('"),
        ("tier = (", 7, "unexpected '('"),
        ("tier edge", 5, "expected one of"),
        ("tier=a=b", 6, "unexpected '='"),
        ("tier=a)", 6, "expected ',' or the end"),
        ("tier !x", 5, "expected '!='"),
        ("!", 1, "expected a label key"),
        ("!tier=x", 5, "expected ',' or the end"),
        ("a,b,,c", 4, "expected a label key"),
        ("tier in (a b)", 11, "expected ',' or ')'"),
        ("x" * 64, 0, "not a label key"),
        ("k=" + "v" * 257, 2, "longer than 256"),
    ],
)
def test_errors_point_at_the_offending_character(text: str, position: int, reason: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse(text, field="target")
    err = info.value
    assert isinstance(err, Invalid) and err.code == "invalid" and err.field == "target"
    assert err.position == position, err.message
    assert reason in err.reason
    assert f"position {position}" in err.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("tier=edge", True),
        ("tier=core", False),
        ("tier!=core", True),
        ("missing!=x", True),  # != matches devices without the label, as in Kubernetes
        ("tier in (core,edge)", True),
        ("tier notin (core,edge)", False),
        ("missing notin (a)", True),
        ("missing in (a)", False),
        ("tier", True),
        ("missing", False),
        ("!missing", True),
        ("!tier", False),
        ("site=berlin", True),
        ("site in (paris,berlin),kind=plc", True),
        ("site=paris", False),
        ("kind!=plc", False),
        ("site", True),
        ("!kind", False),
        ("tier=edge,line=4", False),
    ],
)
def test_matching(text: str, expected: bool) -> None:
    assert parse(text).matches(LABELS, "berlin", "plc") is expected
    assert matches(text, LABELS, "berlin", "plc") is expected


def test_retired_devices_are_never_targeted() -> None:
    assert matches(EVERYTHING, LABELS, "berlin", "plc")
    assert not matches(EVERYTHING, LABELS, "berlin", "plc", retired=True)
    assert not matches("tier=edge", LABELS, "berlin", "plc", retired=True)


def test_sites_the_selector_is_confined_to() -> None:
    assert parse("tier=edge").sites is None
    assert parse("site=a").sites == frozenset({"a"})
    assert parse("site in (a,b,c),site notin (c),site in (b,c)").sites == frozenset({"b", "c"})


keys = st.from_regex(r"[a-z0-9][a-z0-9._/-]{0,10}", fullmatch=True)
values = st.from_regex(r"[A-Za-z0-9._:/-]{1,8}", fullmatch=True)
requirement = st.one_of(
    st.builds(lambda k, v: Requirement(k, "=", (v,)), keys, values),
    st.builds(lambda k, v: Requirement(k, "!=", (v,)), keys, values),
    st.builds(lambda k, vs: Requirement(k, "in", tuple(dict.fromkeys(vs))), keys, st.lists(values, min_size=1, max_size=3)),
    st.builds(lambda k, vs: Requirement(k, "notin", tuple(dict.fromkeys(vs))), keys, st.lists(values, min_size=1, max_size=3)),
    st.builds(lambda k: Requirement(k, "exists"), keys),
    st.builds(lambda k: Requirement(k, "!exists"), keys),
)


@given(st.lists(requirement, max_size=5))
def test_printed_selectors_parse_back(requirements: list[Requirement]) -> None:
    selector = Selector(tuple(requirements))
    assert parse(str(selector)) == selector


@given(st.text(max_size=30))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    position = None
    try:
        parse(text)
    except SelectorError as err:
        position = err.position
    assert position is None or 0 <= position <= len(text)
