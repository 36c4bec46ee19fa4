"""The device filter's definition (`projections.fleet.filters`) without servers: "problems" means
what the site counters call trouble, and its SQL keeps the shape the partial index
`devices_problems` was built for. (Live SQL against point-in-time folding is compared over a real
read model in tests/integration/test_device_filter.py.)"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from projections.fleet import model
from projections.fleet.filters import NO_PROBLEM, PROBLEM, DeviceFilter, holds, problem_names, problem_rank

rows = st.builds(model.DeviceRow, device_id=st.just("d1"), site_id=st.just("s1"), registered=st.booleans(),
                 retired=st.booleans(), online=st.booleans(), stuck=st.booleans(), acknowledged=st.booleans(),
                 health=st.sampled_from(model.HEALTHS), drifted_since=st.none() | st.just("2026-01-01T00:00:00Z"))


@given(rows)
def test_problems_are_what_the_site_counters_call_trouble(row: model.DeviceRow) -> None:
    part = model.contribution(row)
    if part is None:  # not counted: not listed either
        assert not DeviceFilter(problems=True).test(row) and not DeviceFilter(problems=False).test(row)
        return
    counts = dict(zip(model.COUNTER_FIELDS, part[1], strict=True))
    trouble = any(counts[f] for f in ("offline", "failed", "degraded", "drifted", "stuck"))
    assert holds(PROBLEM, row) == trouble
    assert (problem_rank(row) < NO_PROBLEM) == trouble  # the filter and the rank name the same devices
    assert (problem_names(row)[:1] or ["none"])[0] == (
        "offline" if not row.online else "failed" if row.health == "failed"
        else "stuck" if row.stuck and not row.acknowledged else "degraded" if row.health == "degraded"
        else "drifted" if row.drifted_since and not row.acknowledged
        else "acknowledged" if row.stuck or row.drifted_since else "none")
    assert DeviceFilter(problems=True).test(row) == trouble
    assert DeviceFilter(problems=False).test(row) == (not trouble)


def test_sql_of_a_filter() -> None:
    params: list[object] = []
    conds = DeviceFilter(site="s1", problems=True, drifted=False).sql(params)
    assert conds == ["registered", "NOT retired", "site_id = $1", "drifted_since IS NULL",
                     "(NOT online OR health IN ('degraded', 'failed') OR drifted_since IS NOT NULL OR stuck)"]
    assert params == ["s1"]
