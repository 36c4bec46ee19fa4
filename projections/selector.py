"""Label selectors on the query side: `shared.selectors` parses and matches in memory
(point-in-time answers); this module compiles a parsed selector to SQL over `devices` (live
answers), with the same meaning: `site`/`kind` are the device's site and kind, and `k!=v` /
`k notin (...)` also match devices without the label."""

from __future__ import annotations

from typing import Any

from shared.selectors import Requirement, Selector, parse

__all__ = ["Selector", "parse", "to_sql"]

_COLUMNS = {"site": "site_id", "kind": "kind"}


def _condition(r: Requirement, params: list[Any]) -> str:
    def p(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    column = _COLUMNS.get(r.key)
    if column is not None:
        if r.op in ("exists", "!exists"):
            return "TRUE" if r.op == "exists" else "FALSE"
        inside = f"{column} = ANY({p(list(r.values))}::text[])"
        return inside if r.op in ("=", "in") else f"NOT ({inside})"
    if r.op in ("exists", "!exists"):
        has = f"labels ? {p(r.key)}"
        return has if r.op == "exists" else f"NOT ({has})"
    if r.op in ("=", "!="):
        contains = f"labels @> {p({r.key: r.values[0]})}::jsonb"  # served by the GIN index
        return contains if r.op == "=" else f"NOT ({contains})"
    inside = f"coalesce((labels ->> {p(r.key)}) = ANY({p(list(r.values))}::text[]), false)"
    return inside if r.op == "in" else f"NOT {inside}"


def to_sql(selector: Selector, params: list[Any]) -> list[str]:
    """WHERE conditions over `devices`; appends their parameters to `params`."""
    return [_condition(r, params) for r in selector.requirements]
