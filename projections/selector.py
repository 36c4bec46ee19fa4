"""Label selectors for device queries (DESIGN §6 syntax): comma-separated terms, all must hold.

    tier=edge   tier!=edge   site in (a,b)   tier notin (x,y)   gpu   !gpu

The key `site` means the device's site, not a label. `parse` validates (Invalid naming the
`selector` parameter); `matches` evaluates in memory (point-in-time answers); `to_sql` compiles to
a WHERE fragment over the `devices` table (live answers).

Kept here, in the query side, because no shared selector module existed when this was written; if
`shared/selectors.py` appears, parsing should move there and this module keep only `to_sql`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from shared.errors import Invalid
from shared.ids import LABEL_KEY_RE, LABEL_VALUE_MAX

Op = Literal["eq", "ne", "in", "notin", "exists", "absent"]

_SET_RE = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s*\(([^()]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([^\s!=(),]+)\s*(==|=|!=)\s*([^,()]*?)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")


class Term(msgspec.Struct, frozen=True):
    """One requirement of a selector."""

    key: str
    op: Op
    values: tuple[str, ...] = ()


def _split(text: str) -> list[str]:
    terms, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise Invalid("unbalanced ')'", field="selector")
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise Invalid("unbalanced '('", field="selector")
    terms.append("".join(current))
    return terms


def _key(key: str) -> str:
    if not LABEL_KEY_RE.fullmatch(key):
        raise Invalid(f"{key!r} is not a label key (lower-case letters, digits, . _ / -)", field="selector")
    return key


def _value(value: str) -> str:
    if len(value) > LABEL_VALUE_MAX or any(c in value for c in "=!"):
        raise Invalid(f"{value[:40]!r} is not a label value", field="selector")
    return value


def parse(text: str) -> list[Term]:
    """The terms of a selector; an empty selector selects everything."""
    if not text.strip():
        return []
    terms: list[Term] = []
    for raw in _split(text):
        if not raw.strip():
            raise Invalid(f"empty term in {text!r}", field="selector")
        if match := _SET_RE.fullmatch(raw):
            values = tuple(_value(v.strip()) for v in match.group(3).split(","))
            if any(not v for v in values):
                raise Invalid(f"empty value in {raw.strip()!r}", field="selector")
            terms.append(Term(_key(match.group(1)), "in" if match.group(2) == "in" else "notin", values))
        elif match := _EQ_RE.fullmatch(raw):
            op: Op = "ne" if match.group(2) == "!=" else "eq"
            terms.append(Term(_key(match.group(1)), op, (_value(match.group(3)),)))
        elif match := _EXISTS_RE.fullmatch(raw):
            terms.append(Term(_key(match.group(2)), "absent" if match.group(1) else "exists"))
        else:
            raise Invalid(f"cannot read {raw.strip()!r} (use k=v, k!=v, k in (a,b), k notin (a,b), k, !k)",
                          field="selector")
    return terms


def matches(terms: list[Term], labels: dict[str, str], site_id: str) -> bool:
    """Whether a device with these labels at this site is selected."""
    for term in terms:
        value = site_id if term.key == "site" else labels.get(term.key)
        ok = {
            "eq": value == term.values[0] if term.values else False,
            "ne": value != term.values[0] if term.values else True,
            "in": value in term.values,
            "notin": value not in term.values,
            "exists": value is not None,
            "absent": value is None,
        }[term.op]
        if not ok:
            return False
    return True


def to_sql(terms: list[Term], params: list[Any]) -> list[str]:
    """WHERE conditions over `devices` for the terms; appends their parameters to `params`."""

    def p(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    conditions = []
    for term in terms:
        if term.key == "site":
            conditions.append({
                "eq": lambda t: f"site_id = {p(t.values[0])}",
                "ne": lambda t: f"site_id <> {p(t.values[0])}",
                "in": lambda t: f"site_id = ANY({p(list(t.values))}::text[])",
                "notin": lambda t: f"NOT (site_id = ANY({p(list(t.values))}::text[]))",
                "exists": lambda t: "TRUE",
                "absent": lambda t: "FALSE",
            }[term.op](term))
            continue
        conditions.append({
            "eq": lambda t: f"labels @> {p({t.key: t.values[0]})}::jsonb",
            "ne": lambda t: f"NOT (labels @> {p({t.key: t.values[0]})}::jsonb)",
            "in": lambda t: f"(labels ->> {p(t.key)}) = ANY({p(list(t.values))}::text[])",
            "notin": lambda t: f"NOT coalesce((labels ->> {p(t.key)}) = ANY({p(list(t.values))}::text[]), false)",
            "exists": lambda t: f"labels ? {p(t.key)}",
            "absent": lambda t: f"NOT (labels ? {p(t.key)})",
        }[term.op](term))
    return conditions
