"""Label selectors (DESIGN §6): parse once, match many devices.

Grammar (requirements separated by commas, all must hold; whitespace around tokens is ignored):

    k=v  k==v  k!=v  k in (a,b)  k notin (a,b)  k  !k

`site` and `kind` are implicit labels: they match a device's site id and kind, which is why the
registry refuses real labels with those keys. As in Kubernetes, `k!=v` and `k notin (...)` also
match devices without the label. The empty selector matches every device. A parse error is an
`Invalid` (a `SelectorError`) whose `position` is the 0-based offset of the offending character.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

from shared.bounds import CONTROL
from shared.errors import Invalid
from shared.ids import LABEL_KEY_RE

IMPLICIT_LABELS = ("site", "kind")
Op = Literal["=", "!=", "in", "notin", "exists", "!exists"]
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/-")
_STOP = frozenset(" \t\r\n,()=!")


class SelectorError(Invalid):
    """A selector that does not parse; `position` is where (0-based)."""

    def __init__(self, reason: str, text: str, position: int, field: str = "selector") -> None:
        shown = f"{text[:position]}\u2192{text[position:]}"  # an arrow at the offending character
        super().__init__(f"{reason} at position {position} in selector {text!r} ({shown!r})", field=field)
        self.reason = reason
        self.position = position


class Requirement(msgspec.Struct, frozen=True):
    """One condition on one label."""

    key: str
    op: Op
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return f"!{self.key}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        return f"{self.key}{self.op}{self.values[0]}"

    def holds(self, labels: Mapping[str, str], site: str, kind: str) -> bool:
        """Whether a device with these labels, site and kind satisfies the requirement."""
        if self.key == "site":
            value: str | None = site
        elif self.key == "kind":
            value = kind
        else:
            value = labels.get(self.key)
        match self.op:
            case "exists":
                return value is not None
            case "!exists":
                return value is None
            case "=" | "in":
                return value is not None and value in self.values
            case _:  # "!=" | "notin"
                return value is None or value not in self.values


class Selector(msgspec.Struct, frozen=True):
    """A parsed selector: all requirements must hold."""

    requirements: tuple[Requirement, ...] = ()

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    def matches(self, labels: Mapping[str, str], site: str, kind: str) -> bool:
        """Whether a device with these labels, site and kind is selected."""
        return all(r.holds(labels, site, kind) for r in self.requirements)

    @property
    def sites(self) -> frozenset[str] | None:
        """The sites the selector is confined to (`site=x` / `site in (...)`), None if any site."""
        allowed: frozenset[str] | None = None
        for r in self.requirements:
            if r.key == "site" and r.op in ("=", "in"):
                values = frozenset(r.values)
                allowed = values if allowed is None else allowed & values
        return allowed


EVERYTHING = Selector()


def matches(selector: Selector | str, labels: Mapping[str, str], site: str, kind: str,
            *, retired: bool = False) -> bool:
    """Whether a device is targeted by `selector`; a retired device never is."""
    if retired:
        return False
    parsed = parse(selector) if isinstance(selector, str) else selector
    return parsed.matches(labels, site, kind)


def parse(text: str, field: str = "selector") -> Selector:
    """Parse a selector; raise SelectorError (an Invalid naming `field`) at the bad character."""
    parser = _Parser(text, field)
    control = CONTROL.search(text)
    if control is not None:
        raise parser.error("a control character", control.start())
    return parser.selector()


class _Parser:
    def __init__(self, text: str, field: str) -> None:
        self.text = text
        self.field = field
        self.pos = 0

    def error(self, reason: str, position: int | None = None) -> SelectorError:
        return SelectorError(reason, self.text, self.pos if position is None else position, self.field)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def selector(self) -> Selector:
        self.skip_space()
        if self.pos == len(self.text):
            return EVERYTHING
        requirements = [self.requirement()]
        while True:
            self.skip_space()
            char = self.peek()
            if not char:
                return Selector(tuple(requirements))
            if char != ",":
                raise self.error(f"expected ',' or the end, found {char!r}")
            self.pos += 1
            requirements.append(self.requirement())

    def requirement(self) -> Requirement:
        self.skip_space()
        if self.peek() == "!":
            self.pos += 1
            self.skip_space()
            return Requirement(self.key(), "!exists")
        key = self.key()
        self.skip_space()
        char = self.peek()
        if char in ("", ","):
            return Requirement(key, "exists")
        if char == "=":
            self.pos += 2 if self.text.startswith("==", self.pos) else 1
            return Requirement(key, "=", (self.value(),))
        if char == "!":
            if not self.text.startswith("!=", self.pos):
                raise self.error("expected '!='")
            self.pos += 2
            return Requirement(key, "!=", (self.value(),))
        start = self.pos
        word = self.word()
        if word in ("in", "notin"):
            return Requirement(key, "in" if word == "in" else "notin", self.value_set())
        raise self.error("expected one of = == != in notin , or the end", start)

    def word(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _KEY_CHARS:
            self.pos += 1
        return self.text[start:self.pos]

    def key(self) -> str:
        start = self.pos
        key = self.word()
        if not key:
            found = repr(self.peek()) if self.peek() else "the end"
            raise self.error(f"expected a label key, found {found}")
        if key not in IMPLICIT_LABELS and not LABEL_KEY_RE.fullmatch(key):
            raise self.error(
                f"{key!r} is not a label key (lower-case letters, digits, and . _ / - after the "
                "first character, up to 63)", start)
        return key

    def value(self) -> str:
        self.skip_space()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _STOP:
            self.pos += 1
        if self.pos < len(self.text) and self.text[self.pos] in "(=!":
            raise self.error(f"unexpected {self.text[self.pos]!r} in a value")
        value = self.text[start:self.pos]
        if len(value) > 256:
            raise self.error("value is longer than 256 characters", start)
        return value

    def value_set(self) -> tuple[str, ...]:
        self.skip_space()
        if self.peek() != "(":
            raise self.error("expected '(' to open the value list")
        self.pos += 1
        values: list[str] = []
        while True:
            self.skip_space()
            start = self.pos
            value = self.value()
            if not value:
                raise self.error("expected a value", start)
            values.append(value)
            self.skip_space()
            char = self.peek()
            if char == ")":
                self.pos += 1
                return tuple(dict.fromkeys(values))
            if char != ",":
                raise self.error("expected ',' or ')' in the value list" if char else
                                 "expected ')' to close the value list")
            self.pos += 1
