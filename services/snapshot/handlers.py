"""The snapshot service's handlers: create (content-addressed, so a repeat is a no-op), retire and
mark known-good, plus read-only queries (get, list, diff) answered from memory.

The service knows sites only from the registry's site events, replayed into its own view and
followed live (DESIGN §1: it never asks the registry). Before deciding a create, the sites its
overrides name are also read from their subjects in the log, so a site added or retired a moment
ago is judged as it stands, whatever the follower's lag."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.client import Client as NATS

from services.snapshot import domain
from services.snapshot.domain import SiteStatus
from shared.aggregates import AggregateStore
from shared.commands import CommandService, Context, Outcome
from shared.contract.snapshot import (
    CreateResult,
    CreateSnapshot,
    DiffResult,
    DiffSnapshots,
    GetSnapshot,
    ListSnapshots,
    MarkGood,
    RetireSnapshot,
    Snapshot,
    SnapshotList,
    SnapshotSummary,
)
from shared.errors import NotFound
from shared.eventlog import Appended, EventLog, Recorded
from shared.events.registry import SiteAdded, SiteRetired
from shared.ids import check_id
from shared.subjects import aggregate_wildcard, event_subject, parse_event_subject

log = logging.getLogger(__name__)

SERVICE = "snapshot"
ACTOR = "service:snapshot"


class SiteView:
    """The sites the registry has announced, built from `fleet.evt.site.*` alone."""

    def __init__(self, eventlog: EventLog) -> None:
        self.log = eventlog
        self.status: dict[str, SiteStatus] = {}
        self._seq: dict[str, int] = {}

    def apply(self, recorded: Recorded) -> None:
        """Fold one site event in (idempotent per sequence)."""
        _, site_id = parse_event_subject(recorded.subject)
        if recorded.seq <= self._seq.get(site_id, 0):
            return
        self._seq[site_id] = recorded.seq
        match recorded.event:
            case SiteAdded():
                self.status[site_id] = "active"
            case SiteRetired():
                self.status[site_id] = "retired"
            case _:
                pass

    async def refresh(self, site_id: str) -> None:
        """Read one site's events straight from the log (the follower may lag)."""
        recorded, _ = await self.log.load(event_subject("site", site_id), self._seq.get(site_id, 0))
        for item in recorded:
            self.apply(item)

    async def follow(self, from_seq: int) -> None:
        """Apply site events as they are appended, until cancelled."""
        async for recorded in self.log.replay(from_seq, subjects=aggregate_wildcard("site"), follow=True):
            try:
                self.apply(recorded)
            except Exception:  # an event-handler error is isolated and logged, never fatal
                log.exception("snapshot: could not apply site event at %d", recorded.seq)


class Snapshots:
    """The snapshot service's state and handlers."""

    def __init__(self, eventlog: EventLog) -> None:
        self.log = eventlog
        self.store: AggregateStore[Snapshot] = AggregateStore(
            eventlog, "snapshot", domain.initial_snapshot, domain.evolve)
        self.sites = SiteView(eventlog)
        self._follower: asyncio.Task[None] | None = None

    # --- View ------------------------------------------------------------------------------------

    def site_status(self, site_id: str) -> SiteStatus:
        """What the registry's events say about a site."""
        return self.sites.status.get(site_id, "absent")

    def snapshot(self, snapshot_id: str) -> Snapshot:
        """A snapshot's state (absent when unknown)."""
        return self.store.get(snapshot_id).state

    def next_version(self, name: str) -> int:
        """One more than the newest version of `name`."""
        return 1 + max((slot.state.version for slot in self.store.slots.values()
                        if slot.state.name == name), default=0)

    # --- wiring ----------------------------------------------------------------------------------

    async def rebuild(self) -> int:
        """Replay snapshots and sites from the log in one pass (only these two families: a few
        events even in a log of millions), then follow site events."""
        last = await self.log.last_stream_seq()
        count = 0
        async for recorded in self.log.replay(1, last, subjects=[aggregate_wildcard("snapshot"),
                                                                 aggregate_wildcard("site")]):
            aggregate, _ = parse_event_subject(recorded.subject)
            (self.store if aggregate == "snapshot" else self.sites).apply(recorded)
            count += 1
        self._follower = asyncio.create_task(self.sites.follow(last + 1), name="snapshot-site-follower")
        return count

    async def close(self) -> None:
        """Stop following site events."""
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follower
            self._follower = None

    def register(self, service: CommandService) -> None:
        """Route every snapshot command to its handler."""
        service.route("create", CreateSnapshot, self.create)
        service.route("retire", RetireSnapshot, self.retire)
        service.route("mark_good", MarkGood, self.mark_good)
        service.route("get", GetSnapshot, self.get)
        service.route("list", ListSnapshots, self.list)
        service.route("diff", DiffSnapshots, self.diff)

    # --- commands --------------------------------------------------------------------------------

    async def create(self, cmd: CreateSnapshot, ctx: Context) -> Outcome:
        """Create a snapshot, or return the existing one with the same content. The parent may
        be given as `name@version`; the id it names is what the content (and the event) holds."""
        if cmd.parent_id is not None and "@" in cmd.parent_id:
            cmd = msgspec.structs.replace(cmd, parent_id=self.resolve(cmd.parent_id, "parent_id").snapshot_id)
        sid = domain.check_create(cmd)
        for site_id in cmd.overrides:  # creates are rare: read each override's site up to now
            await self.sites.refresh(site_id)
        appended = await self.store.execute(
            sid, lambda state: domain.decide_create(state, cmd, self, cmd.actor),
            command_id=cmd.command_id, actor=cmd.actor, now=ctx.now)
        state = self.snapshot(sid)
        return Outcome(appended, CreateResult(snapshot_id=sid, name=state.name, version=state.version,
                                                   created=bool(appended)))

    async def retire(self, cmd: RetireSnapshot, ctx: Context) -> Outcome:
        """Retire a snapshot (by id, or `name@version`)."""
        sid = self._target_id(cmd.snapshot_id)
        appended = await self.store.execute(
            sid, lambda state: domain.decide_retire(state, cmd),
            command_id=cmd.command_id, actor=cmd.actor, now=ctx.now)
        return Outcome(appended, self._summary(self.snapshot(sid)))

    async def mark_good(self, cmd: MarkGood, ctx: Context) -> Outcome:
        """Mark a snapshot (by id, or `name@version`) known-good for a target."""
        sid = self._target_id(cmd.snapshot_id)
        appended = await self.store.execute(
            sid, lambda state: domain.decide_mark_good(state, cmd),
            command_id=cmd.command_id, actor=cmd.actor, now=ctx.now)
        return Outcome(appended, self._summary(self.snapshot(sid)))

    def _target_id(self, ref: str) -> str:
        """The id a command means: an id as given, or the snapshot `name@version` names."""
        if "@" in ref:
            return self.resolve(ref).snapshot_id
        return check_id(ref, "snapshot_id")

    async def on_rollout_completed(self, snapshot_id: str, target: str, rollout_id: str,
                                   event_id: str, ctx: Context) -> list[Appended]:
        """Reaction hook for issue 6: a completed rollout marks its snapshot known-good for its
        target. Keyed by the rollout event's id, so seeing the event twice appends once."""
        cmd = MarkGood(command_id=event_id, actor=ACTOR, snapshot_id=snapshot_id, target=target,
                       rollout_id=rollout_id)
        return await self.store.execute(
            snapshot_id, lambda state: domain.decide_mark_good(state, cmd),
            command_id=event_id, actor=ACTOR, now=ctx.now, correlation_id=rollout_id)

    # --- queries ---------------------------------------------------------------------------------

    def resolve(self, ref: str, field: str = "snapshot_id") -> Snapshot:
        """A snapshot by id, `name@version` or `name` (newest version)."""
        state = self.snapshot(ref) if ref else None
        if state is not None and state.status != "absent":
            return state
        name, _, version = ref.partition("@")
        candidates = [slot.state for slot in self.store.slots.values() if slot.state.name == name]
        if version:
            candidates = [s for s in candidates if str(s.version) == version]
        if not candidates:
            raise NotFound(f"no snapshot {ref!r} (give an id, name@version or name)", field=field)
        return max(candidates, key=lambda s: s.version)

    async def get(self, cmd: GetSnapshot, ctx: Context) -> Outcome:
        """One snapshot with its config."""
        return Outcome(result=self.resolve(cmd.snapshot_id))

    async def list(self, cmd: ListSnapshots, ctx: Context) -> Outcome:
        """Snapshot summaries, by name then newest version first."""
        states = [slot.state for slot in self.store.slots.values()
                  if (cmd.name is None or slot.state.name == cmd.name)
                  and (cmd.include_retired or slot.state.status == "active")]
        states.sort(key=lambda s: (s.name, -s.version))
        return Outcome(result=SnapshotList(snapshots=[self._summary(s) for s in states]))

    async def diff(self, cmd: DiffSnapshots, ctx: Context) -> Outcome:
        """Structural diff of base config, artifacts and overrides."""
        a = self.resolve(cmd.a, "a")
        b = self.resolve(cmd.b, "b")
        return Outcome(result=DiffResult(a=a.snapshot_id, b=b.snapshot_id, changes=domain.diff(a, b)))

    @staticmethod
    def _summary(state: Snapshot) -> SnapshotSummary:
        return SnapshotSummary(snapshot_id=state.snapshot_id, name=state.name, version=state.version,
                               status=state.status, artifacts=state.artifacts, override_sites=sorted(state.overrides),
                               parent_id=state.parent_id, description=state.description, author=state.author,
                               known_good=state.known_good)


async def start(nc: NATS, eventlog: EventLog) -> tuple[Snapshots, CommandService]:
    """Rebuild snapshots and the site view from the log and start answering commands."""
    snapshots = Snapshots(eventlog)
    count = await snapshots.rebuild()
    service = CommandService(nc, SERVICE)
    snapshots.register(service)
    await service.start()
    log.info("snapshot ready: %d events replayed, %d snapshots, %d sites", count,
             len(snapshots.store.slots), len(snapshots.sites.status))
    return snapshots, service


async def stop(snapshots: Snapshots, service: CommandService) -> None:
    """Stop answering and stop following sites."""
    await service.stop()
    await snapshots.close()


__all__ = ["Snapshots", "start", "stop"]
