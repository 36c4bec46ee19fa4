"""The device filter of the fleet read model, defined once: a filter is a list of terms over
`devices` columns (= `DeviceRow` fields), and each term renders both to SQL (live answers, over
`rm_fleet.devices`) and to a Python test (point-in-time answers, over a folded `FleetState`). So a
question asked live and at the current sequence gets the same devices.

The terms use two-valued logic on both sides: `Not` and `AnyOf` only ever wrap columns that are
NOT NULL or `IS NULL` tests, where SQL's NULL cannot differ from Python's `None`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from projections.fleet.model import DeviceRow
from projections.selector import to_sql
from shared.selectors import EVERYTHING, Selector

_LITERAL = re.compile(r"^[a-z_]+$")


class Is(msgspec.Struct, frozen=True):
    """`column = value` (a boolean column: `column` / `NOT column`). `inline`: the value is part
    of the definition, not the question, and is written into the SQL (so a partial index whose
    predicate names it can serve the query)."""

    column: str
    value: str | bool
    inline: bool = False


class In(msgspec.Struct, frozen=True):
    """`column IN (values...)`, values fixed by the definition (inlined)."""

    column: str
    values: tuple[str, ...]


class Null(msgspec.Struct, frozen=True):
    """`column IS NULL` (`null=True`) or `IS NOT NULL`."""

    column: str
    null: bool


class Labels(msgspec.Struct, frozen=True):
    """A label selector (`shared.selectors`: matched in memory, compiled by `projections.selector`)."""

    selector: Selector


class AnyOf(msgspec.Struct, frozen=True):
    """At least one of the terms."""

    terms: tuple[Term, ...]


class AllOf(msgspec.Struct, frozen=True):
    """Every one of the terms."""

    terms: tuple[Term, ...]


class Not(msgspec.Struct, frozen=True):
    """The term does not hold."""

    term: Term


Term = Is | In | Null | Labels | AnyOf | AllOf | Not

# A "problem device" and its rank, defined once: the first of these that holds names the device's
# worst problem, and its index is the rank (`order=worst`: rank, then id). An operator's
# acknowledgement (of a drift, or of a device stuck reconciling it) moves the device last, still
# listed. Rendered to SQL by `rank_sql`, tested in memory by `problem_rank`.
PROBLEM_RANKS: tuple[tuple[str, Term], ...] = (
    ("offline", Is("online", False)),
    ("failed", Is("health", "failed", inline=True)),
    ("stuck", AllOf((Is("stuck", True), Is("acknowledged", False)))),
    ("degraded", Is("health", "degraded", inline=True)),
    ("drifted", AllOf((Null("drifted_since", False), Is("acknowledged", False)))),
    ("acknowledged", AnyOf((Is("stuck", True), Null("drifted_since", False)))),
)
NO_PROBLEM = len(PROBLEM_RANKS)

# "Problems": offline, failed, degraded, drifted or stuck — what the site counters call trouble:
# exactly the devices with a rank in PROBLEM_RANKS (tests/unit/test_device_filter.py), written in
# the shape the partial index `devices_problems` was built for.
PROBLEM = AnyOf((Is("online", False), In("health", ("degraded", "failed")), Null("drifted_since", False),
                 Is("stuck", True)))


def _literal(value: str) -> str:
    assert _LITERAL.match(value), value  # only fixed words of this module are inlined
    return f"'{value}'"


def to_sql_condition(term: Term, params: list[Any]) -> str:
    """One term as a SQL condition over `devices`; appends its parameters to `params`."""
    match term:
        case Is(column, bool() as value):
            return column if value else f"NOT {column}"
        case Is(column, value, inline):
            if inline:
                return f"{column} = {_literal(str(value))}"
            params.append(value)
            return f"{column} = ${len(params)}"
        case In(column, values):
            return f"{column} IN ({', '.join(_literal(v) for v in values)})"
        case Null(column, null):
            return f"{column} IS {'' if null else 'NOT '}NULL"
        case Labels(selector):
            return " AND ".join(f"({c})" for c in to_sql(selector, params)) or "TRUE"
        case AnyOf(terms):
            return "(" + " OR ".join(to_sql_condition(t, params) for t in terms) + ")"
        case AllOf(terms):
            return "(" + " AND ".join(to_sql_condition(t, params) for t in terms) + ")"
        case Not(inner):
            return f"NOT {to_sql_condition(inner, params)}"
    raise AssertionError(term)


def holds(term: Term, row: DeviceRow) -> bool:
    """Whether one term holds for a device row."""
    match term:
        case Is(column, value):
            return bool(getattr(row, column) == value)
        case In(column, values):
            return getattr(row, column) in values
        case Null(column, null):
            return (getattr(row, column) is None) == null
        case Labels(selector):
            return selector.matches(row.labels, row.site_id, row.kind)
        case AnyOf(terms):
            return any(holds(t, row) for t in terms)
        case AllOf(terms):
            return all(holds(t, row) for t in terms)
        case Not(inner):
            return not holds(inner, row)
    raise AssertionError(term)


def problem_rank(row: DeviceRow) -> int:
    """A device's rank in `PROBLEM_RANKS` (`NO_PROBLEM`: none holds), in memory."""
    return next((i for i, (_, term) in enumerate(PROBLEM_RANKS) if holds(term, row)), NO_PROBLEM)


def problem_names(row: DeviceRow) -> list[str]:
    """Every problem of `PROBLEM_RANKS` that holds for a device, worst first."""
    return [name for name, term in PROBLEM_RANKS if holds(term, row)]


def rank_sql() -> str:
    """`problem_rank` as a SQL expression over `devices` (every term is inlined: no parameters)."""
    params: list[Any] = []
    whens = " ".join(f"WHEN {to_sql_condition(term, params)} THEN {i}" for i, (_, term) in enumerate(PROBLEM_RANKS))
    assert not params
    return f"(CASE {whens} ELSE {NO_PROBLEM} END)"


class DeviceFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Filters of GET /v1/devices. Devices only desired or observed events have named (not in
    the registry) are never listed, as the counters never count them."""

    site: str | None = None
    snapshot: str | None = None
    desired_snapshot: str | None = None
    health: str | None = None
    online: bool | None = None
    drifted: bool | None = None
    problems: bool | None = None
    rollout: str | None = None
    include_retired: bool = False
    selector: Selector = EVERYTHING
    selector_text: str | None = None

    def params(self) -> dict[str, Any]:
        """The filter as plain values, for the cursor fingerprint."""
        out = msgspec.structs.asdict(self)
        out.pop("selector")
        return out

    def terms(self) -> list[Term]:
        """The filter as terms, all of which must hold."""
        terms: list[Term] = [Is("registered", True)]
        if not self.include_retired:
            terms.append(Is("retired", False))
        for column, value in (("site_id", self.site), ("reported_snapshot_id", self.snapshot),
                              ("desired_snapshot_id", self.desired_snapshot), ("health", self.health),
                              ("rollout_id", self.rollout), ("online", self.online)):
            if value is not None:
                terms.append(Is(column, value))
        if self.drifted is not None:
            terms.append(Null("drifted_since", not self.drifted))
        if self.problems is not None:
            terms.append(PROBLEM if self.problems else Not(PROBLEM))
        if self.selector.requirements:
            terms.append(Labels(self.selector))
        return terms

    def sql(self, params: list[Any]) -> list[str]:
        """WHERE conditions over `devices` (live answers); appends their parameters to `params`."""
        return [to_sql_condition(t, params) for t in self.terms()]

    def test(self, row: DeviceRow) -> bool:
        """The same filter over a row in memory (point-in-time answers)."""
        return self.predicate()(row)

    def predicate(self) -> Callable[[DeviceRow], bool]:
        """`test` with the terms built once, for folding over many rows."""
        terms = self.terms()
        return lambda row: all(holds(t, row) for t in terms)
