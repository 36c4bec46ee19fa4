"""Events of the rollout service (`fleet.evt.rollout.<id>`). Every decision a rollout makes is an
event that carries its inputs: the wave plan (recorded once, at start), each assignment window,
each bake, each gate verdict with the counts, metric aggregates and thresholds it used, and every
operator action. Assignments themselves are DesiredStateAssigned events on the devices'
`fleet.evt.desired.<device>` subjects, appended in the same atomic batch."""

from __future__ import annotations

import msgspec

from shared.envelope import Event


class MetricGate(msgspec.Struct, frozen=True, kw_only=True):
    """A telemetry threshold over heartbeat metrics, e.g. `error_rate p95 <= 0.02`."""

    metric: str
    aggregate: str = "p95"  # p50 | p90 | p95 | p99 | avg | max | min
    op: str = "<="  # <= | < | >= | >
    threshold: float = 0.0


class Gates(msgspec.Struct, frozen=True, kw_only=True):
    """What a wave must show at the end of its bake to let the rollout go on."""

    min_healthy: float = 0.9
    max_failed: float = 0.05
    max_offline: float = 0.1
    metrics: list[MetricGate] = []


class MetricDistribution(msgspec.Struct, frozen=True, kw_only=True):
    """A wave's values of one heartbeat metric at a gate, kept so that any percentile threshold can
    be judged again later (`fleet rollout what-if`): with at most 100 values, all of them sorted;
    with more, the nearest-rank percentiles p1..p100 (`values[k-1]` is pk, exact for every whole
    percentile), plus count, sum and min for avg and min."""

    count: int
    sum: float
    min: float
    values: list[float]


class GateInputs(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a gate verdict was computed from. `metrics` holds the aggregates the gates asked
    for; `distributions` (recorded since what-if exists; `distributions_recorded` tells an older
    event apart) the distribution of every metric the wave's devices reported."""

    devices: int
    healthy: int
    converged: int
    failed: int
    timed_out: int
    offline: int
    degraded: int
    metrics: dict[str, float] = {}
    distributions: dict[str, MetricDistribution] = {}
    distributions_recorded: bool = False


class RolloutEvent(Event, frozen=True, kw_only=True):
    """Base of rollout events."""

    id_field = "rollout_id"
    rollout_id: str


class RolloutStarted(RolloutEvent, frozen=True, kw_only=True):
    """A rollout of `snapshot_id` to the devices matching `target` began; waves follow."""

    aggregate = "rollout"
    snapshot_id: str
    target: str
    canary: str = ""
    wave_percents: list[int] = msgspec.field(default_factory=lambda: [100])
    wave_sizes: list[int] = []
    max_in_flight: int = 500
    # a share of each wave (0: none): a wave's limit is the larger of the two (issue #26)
    max_in_flight_percent: float = 0.0
    bake_seconds: float = 0.0
    apply_timeout_seconds: float = 300.0
    gates: Gates = Gates()
    on_failure: str = "pause"
    approve_after: list[int] = []
    config_hashes: dict[str, str] = {}
    not_before: str | None = None  # scheduled start: nothing is assigned before this time
    ignore_windows: bool = False  # emergency: assign regardless of the sites' maintenance windows
    rollback_in_windows: bool = False  # a rollback also waits for windows (by default it does not)


class RolloutWavePlanned(RolloutEvent, frozen=True, kw_only=True):
    """Part of the membership of one wave (large waves are recorded in several parts)."""

    aggregate = "rollout"
    wave: int
    part: int = 0
    devices: list[str]


class RolloutWaveStarted(RolloutEvent, frozen=True, kw_only=True):
    """Wave `wave` (0 = canary) began assigning."""

    aggregate = "rollout"
    wave: int


class RolloutDevicesAssigned(RolloutEvent, frozen=True, kw_only=True):
    """These devices were given the rollout's snapshot at `at` (their desired events are in the
    same atomic batch). `previous` holds what each had been given before, as
    `[snapshot_id, config_hash]` — what a rollback restores."""

    aggregate = "rollout"
    wave: int
    at: str
    devices: list[str]
    previous: dict[str, list[str]] = {}


class RolloutDevicesRestored(RolloutEvent, frozen=True, kw_only=True):
    """A rollback gave these devices back their earlier desired state (desired events in the
    same batch)."""

    aggregate = "rollout"
    devices: list[str]


class RolloutWaveWaiting(RolloutEvent, frozen=True, kw_only=True):
    """Devices of the wave (or of the rollback) wait because their sites' maintenance windows are
    closed: `opens` maps each such site to when it opens next ("" when not within 8 days). An
    empty `opens` says the wait is over. Recorded whenever that set of sites changes."""

    aggregate = "rollout"
    wave: int
    opens: dict[str, str] = {}


class RolloutWindowsIgnored(RolloutEvent, frozen=True, kw_only=True):
    """Emergency: from now on this rollout (and its rollback) assigns regardless of maintenance
    windows; the envelope's actor says who decided it."""

    aggregate = "rollout"
    reason: str = ""


class RolloutWaveBaking(RolloutEvent, frozen=True, kw_only=True):
    """Every device of the wave has settled; the bake runs until `until`."""

    aggregate = "rollout"
    wave: int
    until: str


class RolloutGateEvaluated(RolloutEvent, frozen=True, kw_only=True):
    """The gate verdict for a wave, with its inputs and the thresholds it was held to."""

    aggregate = "rollout"
    wave: int
    passed: bool
    inputs: GateInputs
    gates: Gates
    reasons: list[str] = []


class RolloutWaveHeld(RolloutEvent, frozen=True, kw_only=True):
    """The wave passed its gate and waits for an operator's `promote`."""

    aggregate = "rollout"
    wave: int


class RolloutPromoted(RolloutEvent, frozen=True, kw_only=True):
    """An operator approved going on after a held wave."""

    aggregate = "rollout"
    wave: int


class RolloutPaused(RolloutEvent, frozen=True, kw_only=True):
    """Assignment stopped until `resume` (by an operator, or a failed gate under `pause`)."""

    aggregate = "rollout"
    reason: str = ""


class RolloutResumed(RolloutEvent, frozen=True, kw_only=True):
    """The rollout goes on from where it paused; after a failed gate, resuming overrides it."""

    aggregate = "rollout"
    override_gate: bool = False


class RolloutAborted(RolloutEvent, frozen=True, kw_only=True):
    """The rollout stopped for good; what was assigned stays assigned."""

    aggregate = "rollout"
    reason: str = ""


class RolloutRollbackStarted(RolloutEvent, frozen=True, kw_only=True):
    """Every touched device is being restored to what it had before (or to `to_snapshot_id`)."""

    aggregate = "rollout"
    reason: str = ""
    to_snapshot_id: str | None = None
    to_config_hashes: dict[str, str] = {}
    devices: int = 0


class RolloutRolledBack(RolloutEvent, frozen=True, kw_only=True):
    """All touched devices have been given their restored desired state."""

    aggregate = "rollout"


class RolloutCompleted(RolloutEvent, frozen=True, kw_only=True):
    """Every wave passed its gate; the snapshot is known-good for the target."""

    aggregate = "rollout"
