"""Response types of the query API. The OpenAPI document is generated from these Structs, so the
contract and the encoder cannot disagree."""

from __future__ import annotations

from typing import Any

import msgspec

from projections.api.picture import DeviceStateFreshness
from projections.changes.model import ChangeRow
from projections.fleet.model import DeviceRow, ProgressCounts, RolloutRow, SiteRow, SnapshotRow, WaveProgress


class Counts(msgspec.Struct, frozen=True, kw_only=True):
    """Devices by state (retired devices are not counted)."""

    total: int = 0
    online: int = 0
    offline: int = 0
    ok: int = 0
    degraded: int = 0
    failed: int = 0
    unknown: int = 0
    drifted: int = 0
    stuck: int = 0


class SummaryCell(Counts, frozen=True, kw_only=True):
    """Devices of one site reporting one snapshot ("" = reports none yet)."""

    site_id: str
    snapshot_id: str


class SiteCounts(Counts, frozen=True, kw_only=True):
    """Devices of one site."""

    site_id: str


class SnapshotCounts(Counts, frozen=True, kw_only=True):
    """Devices reporting one snapshot."""

    snapshot_id: str


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """What runs where: counts by snapshot x site and by state."""

    as_of_seq: int
    lag: int | None
    historical: bool
    at: str | None
    totals: Counts
    by_site: list[SiteCounts]
    by_snapshot: list[SnapshotCounts]
    cells: list[SummaryCell]
    device_state: DeviceStateFreshness | None = None  # how fresh drift's picture is (live answers)


class DevicePage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of devices ordered by id."""

    as_of_seq: int
    lag: int | None
    historical: bool
    at: str | None
    items: list[DeviceRow]
    next_cursor: str | None
    device_state: DeviceStateFreshness | None = None  # how fresh drift's picture is (live answers)


class DeviceAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """One device."""

    as_of_seq: int
    lag: int | None
    historical: bool
    at: str | None
    device: DeviceRow
    device_state: DeviceStateFreshness | None = None  # how fresh drift's picture is (live answers)


class ChangePage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of changes in log order (or reverse)."""

    as_of_seq: int
    lag: int | None
    historical: bool
    at: str | None
    items: list[ChangeRow]
    next_cursor: str | None


class RolloutItem(RolloutRow, frozen=True, kw_only=True):
    """A rollout with its progress per wave and in total, counted as `fleet rollout status` counts
    (a device in flight past its apply timeout at the moment asked about is timed out). Its `wave`,
    each progress entry's and the last gate's count waves from 1, as command replies do."""

    progress: list[WaveProgress] = []
    totals: ProgressCounts = ProgressCounts()


class RolloutPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of rollouts."""

    as_of_seq: int
    lag: int | None
    historical: bool
    at: str | None
    items: list[RolloutItem]
    next_cursor: str | None


class RolloutAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """One rollout."""

    as_of_seq: int
    lag: int | None
    historical: bool
    at: str | None
    rollout: RolloutItem


class SnapshotItem(SnapshotRow, frozen=True, kw_only=True):
    """A snapshot and how many devices report running it."""

    devices: int = 0


class SnapshotPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of snapshots."""

    as_of_seq: int
    lag: int | None
    historical: bool
    at: str | None
    items: list[SnapshotItem]
    next_cursor: str | None


class SiteSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot running at a site, and on how many of its devices ("" = reporting none yet)."""

    snapshot_id: str
    devices: int


class SiteItem(SiteRow, frozen=True, kw_only=True):
    """A site, its device counts and the snapshots running there."""

    counts: Counts = Counts()
    snapshots: list[SiteSnapshot] = []


class SitePage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of sites."""

    as_of_seq: int
    lag: int | None
    historical: bool
    at: str | None
    items: list[SiteItem]
    next_cursor: str | None
    device_state: DeviceStateFreshness | None = None  # how fresh drift's picture is (live answers)


class PoisonedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event a projection could not apply, recorded and skipped."""

    seq: int
    type: str
    aggregate: str
    aggregate_id: str
    error: str
    at: str


class ProjectionState(msgspec.Struct, frozen=True, kw_only=True):
    """One projection as the runner last recorded it."""

    name: str
    version: int
    generation: int
    checkpoint: int
    lag: int | None
    applied: int
    skipped_unknown: int
    rate: float
    state: str
    error_seq: int | None = None  # the last event skipped as poison
    error: str | None = None
    rebuilt_at: str | None = None
    updated_at: str | None = None
    poisoned: int = 0  # events skipped as poison by the live schema's build
    poison: list[PoisonedEvent] = []  # the first of them, oldest first


class ProjectionsAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """Every projection and the log's head."""

    log_last_seq: int | None
    items: list[ProjectionState]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """Liveness / readiness."""

    ok: bool
    detail: dict[str, Any] = {}


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    """Why a request was refused."""

    code: str
    message: str
    field: str | None = None


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """The body of every 4xx/5xx answer."""

    error: ErrorDetail
