"""Parsing what operators type: canary (`5`, `2%`, `site:a,b`), waves (`10,50,100`), fractions
(`95%`, `0.95`) and metric gates (`error_rate p95<=0.02`). Pure; errors name the field."""

from __future__ import annotations

import itertools
import math
import re

import msgspec

from shared.errors import Invalid
from shared.events.rollout import MetricGate
from shared.ids import check_id

AGGREGATES = ("p50", "p90", "p95", "p99", "avg", "max", "min")  # and any other pN, N = 1..100
_METRIC_RE = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s+(p(?:100|[1-9][0-9]?)|avg|max|min)\s*(<=|>=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$"
)


class Canary(msgspec.Struct, frozen=True):
    """No canary (`kind` ""), a device count, a percentage of the target, or named sites."""

    kind: str = ""  # "" | count | percent | sites
    count: int = 0
    percent: float = 0.0
    sites: tuple[str, ...] = ()

    def size(self, total: int) -> int:
        """How many devices a count/percent canary takes from `total`."""
        if self.kind == "count":
            return min(self.count, total)
        if self.kind == "percent":
            return min(total, max(1, math.ceil(total * self.percent / 100)))
        return 0


def parse_canary(text: str) -> Canary:
    """`""` (none), `5` (devices), `2%` (of the target) or `site:a,b` (those sites first)."""
    text = text.strip()
    if not text:
        return Canary()
    if text.startswith("site:"):
        sites = tuple(s.strip() for s in text[5:].split(",") if s.strip())
        if not sites:
            raise Invalid("site: needs at least one site id, e.g. site:berlin-1", field="canary")
        for site in sites:
            check_id(site, "canary")
        return Canary("sites", sites=sites)
    if text.endswith("%"):
        percent = _number(text[:-1], "canary")
        if not 0 < percent < 100:
            raise Invalid("a canary percentage must be above 0 and below 100", field="canary")
        return Canary("percent", percent=percent)
    count = _number(text, "canary")
    if count < 1 or count != int(count):
        raise Invalid("a canary count must be a whole number of devices, at least 1", field="canary")
    return Canary("count", count=int(count))


def parse_waves(text: str | list[int]) -> list[int]:
    """Cumulative percentages, strictly increasing, ending at 100."""
    raw = text if isinstance(text, list) else [p for p in str(text).split(",") if p.strip()]
    try:
        waves = [int(str(p).strip().rstrip("%")) for p in raw]
    except ValueError:
        raise Invalid(f"{text!r} is not a list of percentages like 10,50,100", field="waves") from None
    if not waves or waves[-1] != 100:
        raise Invalid("waves must end at 100 (the whole target)", field="waves")
    if any(p <= 0 for p in waves) or any(b <= a for a, b in itertools.pairwise(waves)):
        raise Invalid("waves must be cumulative percentages, strictly increasing, each above 0",
                      field="waves")
    return waves


def parse_fraction(text: str | float, field: str) -> float:
    """`95%` or `0.95` -> 0.95."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        value = _number(text[:-1], field) / 100 if text.strip().endswith("%") else _number(text, field)
    if not 0 <= value <= 1:
        raise Invalid(f"{text!r} is not a fraction between 0 and 1 (or 0% and 100%)", field=field)
    return value


def parse_metric_gate(text: str) -> MetricGate:
    """`error_rate p95<=0.02` -> MetricGate."""
    match = _METRIC_RE.match(text)
    if match is None:
        raise Invalid(
            f"{text!r} is not a metric gate; write it as `NAME AGG OP VALUE`, e.g. "
            f"`error_rate p95<=0.02` (AGG one of {', '.join(AGGREGATES)} or any pN, N 1-100; OP <=, <, >=, >)",
            field="metric",
        )
    name, aggregate, op, value = match.groups()
    return MetricGate(metric=name, aggregate=aggregate, op=op, threshold=float(value))


def _number(text: str, field: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise Invalid(f"{text!r} is not a number", field=field) from None
