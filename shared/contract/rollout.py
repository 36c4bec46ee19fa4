"""The rollout service's commands (`fleet.cmd.rollout.<command>`) and their results.

Structured values on the wire: waves are a list of cumulative percentages, a canary is an object,
metric gates are `{"metric", "aggregate", "op", "value"}` objects, durations are seconds, and
waves are numbered from 1 in commands and replies (events keep their 0-based `wave`: an event's
field never changes meaning). The short forms people type (`--waves 10,50,100`,
`--metric 'error_rate p95<=0.02'`, `--canary 2%`, `--min-healthy 95%`) are parsed here, into
these types, by the CLI only."""

from __future__ import annotations

import itertools
import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from shared.errors import Invalid
from shared.events.rollout import GateInputs, Gates, MetricGate
from shared.ids import Id, check_id
from shared.wire import Command, Expression, Reason

MAX_IN_FLIGHT_MAX = 1_000_000
METRIC_NAME = r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$"
AGGREGATE = r"^(p(100|[1-9][0-9]?)|avg|max|min)$"
AGGREGATES = ("p50", "p90", "p95", "p99", "avg", "max", "min")  # and any other pN, N = 1..100
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1, description="a fraction of the wave, 0 to 1")]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=30 * 86400, description="seconds")]
WaveNumber = Annotated[int, msgspec.Meta(ge=1, le=100, description="a wave, counted from 1")]
Percent = Annotated[int, msgspec.Meta(ge=1, le=100)]
Status = Literal["new", "running", "paused", "completed", "aborted", "rolling_back", "rolled_back"]
Outcome = Literal["same", "stops_earlier", "would_pass", "unknown", "no_gates"]
Phase = Literal["assigning", "baking", "held", "gate_failed"]


class MetricThreshold(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A gate on a heartbeat metric over a wave's devices, e.g. `error_rate p95 <= 0.02`."""

    metric: Annotated[Annotated[str, msgspec.Meta(pattern=METRIC_NAME)], msgspec.Meta(description=(
        "a heartbeat metric's name"
    ))]
    aggregate: Annotated[str, msgspec.Meta(pattern=AGGREGATE, description="pN (N 1-100), avg, max or min")] = "p95"
    op: Literal["<=", "<", ">=", ">"] = "<="
    value: Annotated[float, msgspec.Meta(description="the threshold")]

    def gate(self) -> MetricGate:
        """The gate as the rollout records it (its `threshold` is this `value`)."""
        return MetricGate(metric=self.metric, aggregate=self.aggregate, op=self.op, threshold=self.value)


class Canary(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """The devices that go first, before the waves: a count, a percentage of the target, or every
    device of the named sites (give exactly one)."""

    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_IN_FLIGHT_MAX)] | None = None
    percent: Annotated[float, msgspec.Meta(gt=0, lt=100)] | None = None
    sites: Annotated[list[Id], msgspec.Meta(min_length=1, max_length=100)] | None = None

    @property
    def kind(self) -> str:
        """count, percent or sites."""
        return "count" if self.count is not None else "percent" if self.percent is not None else "sites"

    def check(self) -> Canary:
        """Raise Invalid unless exactly one of count, percent and sites is given."""
        if sum(x is not None for x in (self.count, self.percent, self.sites)) != 1:
            raise Invalid("a canary is one of count, percent or sites", field="canary")
        return self

    def size(self, total: int) -> int:
        """How many devices a count/percent canary takes from `total`."""
        if self.count is not None:
            return min(self.count, total)
        if self.percent is not None:
            return min(total, max(1, math.ceil(total * self.percent / 100)))
        return 0

    def text(self) -> str:
        """The short form (`5`, `2%`, `site:a,b`), as RolloutStarted records it."""
        if self.count is not None:
            return str(self.count)
        if self.percent is not None:
            return f"{self.percent:g}%"
        return "site:" + ",".join(self.sites or ())


class StartRollout(Command, frozen=True, kw_only=True):
    """Start rolling `snapshot_id` out to the active devices matching `target` (a label selector;
    "" = every device): the canary first, then waves of cumulative percentages, each baked and
    judged by the gates; a failed gate pauses or rolls back (`on_failure`)."""

    snapshot_id: Annotated[Id, msgspec.Meta(description="the snapshot to roll out")]
    target: Annotated[Expression, msgspec.Meta(description=(
        "a label selector over active devices, e.g. `site in (a,b),tier=edge`; \"\" = every device"
    ))] = ""
    rollout_id: Annotated[Id | None, msgspec.Meta(description=(
        "the new rollout's id; default: derived from command_id"
    ))] = None
    canary: Annotated[Canary | None, msgspec.Meta(description=(
        "devices that go first, as wave 1; null: no canary"
    ))] = None
    waves: Annotated[list[Percent], msgspec.Meta(
        min_length=1, max_length=100, description="cumulative percentages of the target, ending at 100",
        extra_json_schema={"default": [100]})] = msgspec.field(default_factory=lambda: [100])
    max_in_flight: Annotated[Annotated[int, msgspec.Meta(ge=0, le=MAX_IN_FLIGHT_MAX)], msgspec.Meta(description=(
        "devices being changed at once (assigned, not yet settled); 0 with no max_in_flight_percent: "
        "the default rule, the larger of 500 and 25% of each wave"
    ))] = 0
    max_in_flight_percent: Annotated[Annotated[float, msgspec.Meta(gt=0, le=100)] | None, msgspec.Meta(
        description="a share of each wave in flight at once (with max_in_flight, that count is its floor)"
    )] = None
    bake_seconds: Annotated[Seconds, msgspec.Meta(description=(
        "how long each wave runs before its gates are judged"
    ))] = 0.0
    apply_timeout_seconds: Annotated[Seconds, msgspec.Meta(description=(
        "how long a device has to report the new config before it counts as timed out"
    ))] = 300.0
    min_healthy: Annotated[Fraction, msgspec.Meta(description=(
        "gate: at least this fraction of the wave healthy and converged"
    ))] = 0.9
    max_failed: Annotated[Fraction, msgspec.Meta(description=(
        "gate: at most this fraction of the wave failed or timed out"
    ))] = 0.05
    max_offline: Annotated[Fraction, msgspec.Meta(description=(
        "gate: at most this fraction of the wave offline"
    ))] = 0.1
    metrics: Annotated[Annotated[list[MetricThreshold], msgspec.Meta(max_length=32)], msgspec.Meta(description=(
        "gates on heartbeat metrics, aggregated over the wave's devices"
    ))] = []
    on_failure: Annotated[Literal["pause", "rollback"], msgspec.Meta(description=(
        "what a failed gate does: pause (an operator decides) or roll back"
    ))] = "pause"
    approve_after: Annotated[Annotated[list[WaveNumber], msgspec.Meta(max_length=100)], msgspec.Meta(description=(
        "hold after these waves (from 1) until `promote`"
    ))] = []
    dry_run: Annotated[bool, msgspec.Meta(description="return the plan and change nothing")] = False
    not_before: Annotated[Annotated[datetime, msgspec.Meta(tz=True)] | None, msgspec.Meta(description=(
        "assign nothing before this time (RFC 3339, with a zone)"
    ))] = None
    ignore_windows: Annotated[bool, msgspec.Meta(description=(
        "emergency: assign regardless of the sites' maintenance windows (recorded)"
    ))] = False
    rollback_in_windows: Annotated[bool, msgspec.Meta(description=(
        "a rollback of this rollout waits for maintenance windows too"
    ))] = False

    def gates(self) -> Gates:
        """The gates as the rollout records them."""
        return Gates(min_healthy=self.min_healthy, max_failed=self.max_failed, max_offline=self.max_offline,
                     metrics=[m.gate() for m in self.metrics])


class ActOnRollout(Command, frozen=True, kw_only=True):
    """pause / resume / abort / promote / ignore_windows one rollout."""

    rollout_id: Id
    reason: Annotated[Reason, msgspec.Meta(description="why, for the record")] = ""


class RollbackRollout(Command, frozen=True, kw_only=True):
    """Restore every device the rollout touched to what it had before (or give them
    `to_snapshot_id`); `plan_only` shows the plan and changes nothing."""

    rollout_id: Id
    to_snapshot_id: Annotated[Id | None, msgspec.Meta(description=(
        "give every touched device this snapshot instead of what it had before"
    ))] = None
    plan_only: Annotated[bool, msgspec.Meta(description="only return the plan")] = False
    reason: Annotated[Reason, msgspec.Meta(description="why, for the record")] = ""


class GetRollout(Command, frozen=True, kw_only=True):
    """One rollout's status, with each wave's progress."""

    rollout_id: Id


class ListRollouts(Command, frozen=True, kw_only=True):
    """All rollouts, newest first."""


class WhatIfGates(Command, frozen=True, kw_only=True):
    """Judge recorded gate verdicts again with proposed thresholds: one rollout, or every rollout
    started within `since_seconds` (all when neither is given). A threshold not given keeps what
    each rollout was started with; `metrics`, when given, replaces the recorded metric gates."""

    rollout_id: Annotated[Id | None, msgspec.Meta(description="judge this rollout only")] = None
    since_seconds: Annotated[Annotated[float, msgspec.Meta(gt=0)] | None, msgspec.Meta(description=(
        "judge every rollout started within this many seconds"
    ))] = None
    min_healthy: Annotated[Fraction | None, msgspec.Meta(description=(
        "proposed min_healthy (null: as recorded)"
    ))] = None
    max_failed: Annotated[Fraction | None, msgspec.Meta(description="proposed max_failed (null: as recorded)")] = None
    max_offline: Annotated[Fraction | None, msgspec.Meta(description=(
        "proposed max_offline (null: as recorded)"
    ))] = None
    metrics: Annotated[Annotated[list[MetricThreshold], msgspec.Meta(max_length=32)] | None, msgspec.Meta(description=(
        "proposed metric gates, in place of the recorded ones (null: as recorded)"
    ))] = None


# --- results ------------------------------------------------------------------------------------


class GateSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A gate verdict: the wave (from 1), whether it passed, why not, and what it was judged on
    (the recorded distributions left out: `what_if` reads them)."""

    wave: int
    passed: bool
    reasons: list[str]
    inputs: GateInputs
    gates: Gates


class WaveProgress(msgspec.Struct, frozen=True, kw_only=True):
    """How many of a wave's devices stand where (counts by status: pending, applying, converged,
    failed, timed_out, offline, left, restored...)."""

    wave: int
    size: int
    counts: dict[str, int]


class ScheduleEntry(msgspec.Struct, frozen=True, kw_only=True):
    """When a wave is expected to run given maintenance windows (null: not within 8 days)."""

    wave: int
    starts: str | None = None
    all_sites_open: str | None = None
    in_flight: int | None = None  # the wave's in-flight limit
    rounds: int | None = None  # assigned in this many rounds (each about one heartbeat interval)
    assigned_by: str | None = None
    bake_ends: str | None = None


class RollbackStep(msgspec.Struct, frozen=True, kw_only=True):
    """One device of a rollback plan (`to_snapshot_id` null: it had nothing before; left as is)."""

    device_id: str
    from_snapshot_id: str | None
    to_snapshot_id: str | None
    to_config_hash: str | None


class RolloutStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A rollout as replies show it. `wave` is the current wave, from 1; `waves` how many."""

    rollout_id: str
    status: Status
    phase: Phase
    wave: int
    waves: int
    devices: int
    assigned: int
    reason: str
    snapshot_id: str | None
    target: str | None
    last_gate: GateSummary | None
    not_before: str | None
    ignore_windows: bool
    waiting_for_windows: dict[str, str]  # site -> when its window opens next ("" not within 8 days)
    wave_progress: list[WaveProgress] | None = None  # `get` only


class StartResult(RolloutStatus, frozen=True, kw_only=True, omit_defaults=True):
    """The rollout started; with `dry_run`, the plan it would follow (nothing written)."""

    dry_run: bool = False
    plan: list[list[str]] | None = None  # dry run: each wave's devices
    config_hashes: dict[str, str] | None = None  # dry run: site -> effective config hash
    schedule: list[ScheduleEntry] | None = None  # dry run
    expected_seconds: float | None = None  # dry run: until the last wave's bake ends (null: unknown)


class RollbackResult(RolloutStatus, frozen=True, kw_only=True):
    """The rollback started (or, with `plan_only`, would start) with this plan."""

    plan: list[RollbackStep]
    in_windows: bool  # the restores wait for maintenance windows


class RolloutList(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to `list`."""

    rollouts: list[RolloutStatus]


class WaveWhatIf(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded verdict beside the what-if verdict, with the numbers of both (`wave` from 1)."""

    wave: int
    devices: int
    healthy: int
    failed: int
    offline: int
    recorded_passed: bool
    recorded_reasons: list[str]
    recorded_metrics: dict[str, float]
    what_if_passed: bool | None  # None: a rule could not be judged from what was recorded
    what_if_reasons: list[str]
    what_if_metrics: dict[str, float]
    unknown: list[str] = []


class RolloutWhatIf(msgspec.Struct, frozen=True, kw_only=True):
    """A rollout's recorded verdicts judged again."""

    rollout_id: str
    status: str
    outcome: Outcome
    waves: list[WaveWhatIf]


class Proposal(msgspec.Struct, frozen=True, kw_only=True):
    """Proposed thresholds; null keeps what each rollout was started with."""

    min_healthy: float | None = None
    max_failed: float | None = None
    max_offline: float | None = None
    metrics: list[MetricGate] | None = None  # replaces the recorded metric gates when given


class WhatIfResult(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to `what_if`: each rollout judged again, and counts over them."""

    results: list[RolloutWhatIf]
    rollouts: int
    judged: int
    stops_earlier: int
    failed: int
    would_pass: int
    unknown: int
    summary: str
    proposal: Proposal


# --- the short forms people type (the CLI), parsed into the types above ---------------------------

_METRIC_RE = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s+(p(?:100|[1-9][0-9]?)|avg|max|min)\s*(<=|>=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$"
)


def parse_canary(text: str) -> Canary | None:
    """`""` (none), `5` (devices), `2%` (of the target) or `site:a,b` (those sites first)."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("site:"):
        sites = [s.strip() for s in text[5:].split(",") if s.strip()]
        if not sites:
            raise Invalid("site: needs at least one site id, e.g. site:berlin-1", field="canary")
        for site in sites:
            check_id(site, "canary")
        return Canary(sites=sites)
    if text.endswith("%"):
        percent = _number(text[:-1], "canary")
        if not 0 < percent < 100:
            raise Invalid("a canary percentage must be above 0 and below 100", field="canary")
        return Canary(percent=percent)
    count = _number(text, "canary")
    if count < 1 or count != int(count):
        raise Invalid("a canary count must be a whole number of devices, at least 1", field="canary")
    return Canary(count=int(count))


def parse_waves(text: str) -> list[int]:
    """`10,50,100` -> [10, 50, 100] (checked by `check_waves`)."""
    try:
        waves = [int(p.strip().rstrip("%")) for p in text.split(",") if p.strip()]
    except ValueError:
        raise Invalid(f"{text!r} is not a list of percentages like 10,50,100", field="waves") from None
    return check_waves(waves)


def check_waves(waves: list[int]) -> list[int]:
    """Cumulative percentages, strictly increasing, ending at 100."""
    if not waves or waves[-1] != 100:
        raise Invalid("waves must end at 100 (the whole target)", field="waves")
    if any(p <= 0 for p in waves) or any(b <= a for a, b in itertools.pairwise(waves)):
        raise Invalid("waves must be cumulative percentages, strictly increasing, each above 0",
                      field="waves")
    return waves


def parse_in_flight(text: str) -> dict[str, Any]:
    """`500` -> a count, `10%` -> a share of each wave, `` -> the default rule: StartRollout's
    max_in_flight / max_in_flight_percent."""
    stripped = text.strip()
    if not stripped:
        return {"max_in_flight": 0}
    if stripped.endswith("%"):
        return {"max_in_flight": 0, "max_in_flight_percent": _number(stripped[:-1], "max_in_flight")}
    count = _number(stripped, "max_in_flight")
    if count != int(count) or count < 1:
        raise Invalid(f"{text!r} is not a count of devices (500) or a share of each wave (10%)",
                      field="max_in_flight")
    return {"max_in_flight": int(count)}


def parse_fraction(text: str, field: str) -> float:
    """`95%` or `0.95` -> 0.95."""
    value = _number(text[:-1], field) / 100 if text.strip().endswith("%") else _number(text, field)
    if not 0 <= value <= 1:
        raise Invalid(f"{text!r} is not a fraction between 0 and 1 (or 0% and 100%)", field=field)
    return value


def parse_metric(text: str) -> MetricThreshold:
    """`error_rate p95<=0.02` -> MetricThreshold."""
    match = _METRIC_RE.match(text)
    if match is None:
        raise Invalid(
            f"{text!r} is not a metric gate; write it as `NAME AGG OP VALUE`, e.g. "
            f"`error_rate p95<=0.02` (AGG one of {', '.join(AGGREGATES)} or any pN, N 1-100; OP <=, <, >=, >)",
            field="metrics",
        )
    name, aggregate, op, value = match.groups()
    return MetricThreshold(metric=name, aggregate=aggregate, op=op, value=float(value))  # type: ignore[arg-type]  # op matched the regex


def parse_metric_gate(text: str) -> MetricGate:
    """`error_rate p95<=0.02` -> the recorded MetricGate."""
    return parse_metric(text).gate()


def _number(text: str, field: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise Invalid(f"{text!r} is not a number", field=field) from None
