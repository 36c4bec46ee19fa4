"""The drift service's I/O: heartbeats in, observed-state events out, desired state re-put.

- The device view is rebuilt by replaying the log (registry, desired and observed events, in log
  order) and then follows it, so desired state and registry facts arrive as events, never by
  asking another service.
- Heartbeats (core NATS, queue group `fleet-drift`) are decoded, checked and folded in memory;
  only a change becomes an event. Bad heartbeats are counted by reason and dropped.
- Events are appended by one writer task in atomic batches of up to 1,000, each device's events
  with the expected last sequence of its subject (this service is the single writer of
  `fleet.evt.observed.*`).
- A reconciliation re-puts the device's current desired value with its revision bumped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from services.drift.domain import (
    MALFORMED,
    OVERSIZED,
    REJECT_REASONS,
    SUBJECT_MISMATCH,
    AcknowledgeDrift,
    Beat,
    Command,
    DesiredChanged,
    DeviceState,
    ForceReconcile,
    Policy,
    Retired,
    Tick,
    decide,
    evolve,
    heartbeat_in_current_form,
    in_current_form,
    initial,
    observe,
    partition_of,
    reject,
    resume,
    steady,
    tick_due,
)
from shared import metrics
from shared.appending import Pipeline
from shared.atomic import MAX_BATCH
from shared.checkpoint import Checkpoints
from shared.commands import CommandClient, CommandService, Context, Outcome
from shared.config import Settings
from shared.configs import current_hash, hash_aliases
from shared.contract.drift import Acknowledge, DriftStanding, Reconcile
from shared.desired import ensure_bucket, get_desired, put_desired
from shared.devices import HEARTBEAT_DECODER, HEARTBEAT_MAX_BYTES, DesiredState
from shared.envelope import Envelope, seal
from shared.errors import Conflict, FleetError, Invalid
from shared.eventlog import Appended, EventLog, Recorded, Write
from shared.events.desired import DesiredStateAssigned
from shared.events.observed import ObservedEvent, ReconcileAttempted
from shared.events.registry import DeviceRetired
from shared.events.snapshot import SnapshotCreated
from shared.ids import check_id
from shared.liveness import Duty, Vitals
from shared.subjects import HEARTBEATS_PREFIX, aggregate_wildcard, event_subject, parse_event_subject

log = logging.getLogger(__name__)
ACTOR = "service:drift"
QUEUE_GROUP = "fleet-drift"
PARTITIONED_PREFIX = "fleet.hbp"  # where a server subject mapping puts heartbeats by partition
# Snapshots too, for their configs' hash aliases (the legacy hash form, docs/decisions.md).
_FAMILIES = ("device", "desired", "observed", "snapshot")
_FOLLOWED = [aggregate_wildcard(family) for family in _FAMILIES]


class DriftImage(msgspec.Struct, frozen=True):
    """The drift service's state in a checkpoint."""

    devices: dict[str, DeviceState]
    seqs: dict[str, int]
    aliases: dict[str, str] = {}  # legacy config hash -> RFC 8785 hash (shared.configs.hash_aliases)


def policy_from(settings: Settings) -> Policy:
    """The device timing rules of these settings."""
    return Policy(interval=settings.heartbeat_interval, offline_after=settings.offline_after,
                  drift_grace=settings.drift_grace, reconcile_backoff=settings.reconcile_backoff,
                  reconcile_max_tries=settings.reconcile_max_tries, flap_window=settings.flap_window,
                  flap_changes=settings.flap_changes)


@dataclass
class Stats:
    """Counters a test, a benchmark or /metrics can read."""

    accepted: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    errors: int = 0  # heartbeats or ticks of a device that raised (a bug; logged, the rest go on)
    appended: int = 0
    append_failures: int = 0
    reconciles_put: int = 0
    reconciles_skipped: int = 0
    events: dict[str, int] = field(default_factory=dict)  # observed events decided, by type


def stats_families(stats: Stats) -> list[Metric]:
    """The drift service's counters as Prometheus families (read at scrape time)."""
    accepted = CounterMetricFamily("fleet_heartbeats_accepted", "Heartbeats the drift service judged.",
                                   value=stats.accepted)
    dropped = CounterMetricFamily("fleet_heartbeats_dropped", "Heartbeats the drift service dropped, by reason.",
                                  labels=["reason"])
    for reason, n in sorted(stats.dropped.items()):
        dropped.add_metric([reason], n)
    errors = CounterMetricFamily("fleet_drift_errors", "Heartbeats or ticks that raised (a bug; logged).",
                                 value=stats.errors)
    events = CounterMetricFamily("fleet_drift_events", "Observed-state events decided, by type.", labels=["type"])
    for kind, n in sorted(stats.events.items()):
        events.add_metric([kind], n)
    failures = CounterMetricFamily("fleet_drift_append_failures", "Appends of observed-state events that failed "
                                   "(retried).", value=stats.append_failures)
    reconciles = CounterMetricFamily("fleet_drift_reconciles", "Desired states re-put to reconcile a device, "
                                     "or skipped.", labels=["result"])
    reconciles.add_metric(["put"], stats.reconciles_put)
    reconciles.add_metric(["skipped"], stats.reconciles_skipped)
    return [accepted, dropped, errors, events, failures, reconciles]


class DriftService:
    """Actual state of every device, in memory, and the writer of observed-state events."""

    def readings(self) -> list[Metric]:
        """This instance's counters for /metrics (shared.metrics.READINGS)."""
        return stats_families(self.stats)

    def __init__(self, nc: NATS, eventlog: EventLog, policy: Policy, *,
                 clock: Callable[[], float] = time.time, tick: float | None = None,
                 partition: tuple[int, int] | None = None,
                 checkpoints: Checkpoints[DriftImage] | None = None, vitals: Vitals | None = None) -> None:
        """`partition` = (index, count): this instance owns the devices of one partition and
        takes heartbeats from `fleet.hbp.<index>.<site>.<device>`, where the server's subject
        mapping puts them (see docs/decisions.md); None owns every device (`fleet.hb.*.*`).
        `checkpoints`: where this partition's state is checkpointed. `vitals`: where its duties
        are reported (shared.liveness): `heartbeats` (heard within two intervals whenever a
        device is online) and `writes` (decided events appended)."""
        if partition is not None and not 0 <= partition[0] < partition[1]:
            raise Invalid(f"partition {partition[0]} of {partition[1]} does not exist", field="partition")
        self.partition = partition
        self.nc = nc
        self.log = eventlog
        self.policy = policy
        self.clock = clock
        self.tick_every = tick if tick is not None else max(0.05, min(policy.interval / 4, 1.0))
        self.devices: dict[str, DeviceState] = {}
        self.stats = Stats()
        metrics.READINGS.add(self)
        self._seqs: dict[str, int] = {}  # device -> last stream seq on its observed subject
        self.aliases: dict[str, str] = {}  # legacy config hash -> RFC 8785 hash, from the snapshots
        self._pending: dict[str, list[Envelope]] = {}
        self._reconcile: dict[str, int] = {}  # device -> revision to re-put
        self._own: set[str] = set()  # ids of our events not yet seen coming back from the log
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._follower: asyncio.Task[None] | None = None
        self._next_seq = 1  # the next log sequence to apply
        self._last_written = 0  # sequence of the newest event this instance appended
        self._outage = False  # our NATS connection was seen down by a tick
        self.checkpoints = checkpoints
        self._sub: Subscription | None = None
        self.vitals = vitals or Vitals("drift", "", clock)
        bound = max(2 * policy.interval, 5.0)
        # reported once the service serves (a rebuild of a large log is no stall), until it stops
        self._hearing = Duty("heartbeats", bound, clock)
        self._writing = Duty("writes", bound, clock)
        self._heard = -1  # stats.accepted at the last tick

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild from the log, then serve heartbeats, follow the log and tick."""
        await ensure_bucket(self.nc)
        started = time.perf_counter()
        end = max(await asyncio.gather(*(self.log.last_seq(subjects) for subjects in _FOLLOWED)))
        if self.checkpoints is not None:
            self._next_seq = await self.checkpoints.resume(self.restore)
        resumed = self._next_seq
        self._follower = asyncio.create_task(self._follow(end), name="drift-follow")
        await self._ready.wait()
        log.info("drift ready: followed the log from sequence %d to %d, %d devices, in %.2f s", resumed,
                 self._next_seq - 1, len(self.devices), time.perf_counter() - started)
        now = self.clock()
        for device_id, state in self.devices.items():
            self.devices[device_id] = resume(state, now)
        await self.serve_heartbeats()
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="drift-tick"))
        self._tasks.append(asyncio.create_task(self._write_loop(), name="drift-writer"))
        if self.checkpoints is not None:
            self._tasks.append(asyncio.create_task(
                self.checkpoints.run(lambda: self._next_seq - 1, self.image), name="drift-checkpoints"))
        for duty in (self._hearing, self._writing):
            self.vitals.add(duty)
        log.info("drift: %d devices known, serving heartbeats", len(self.devices))

    async def serve_heartbeats(self) -> None:
        """Take heartbeats (queue group `fleet-drift`)."""
        if self._sub is None:
            subject, queue = f"{HEARTBEATS_PREFIX}.*.*", QUEUE_GROUP
            if self.partition is not None:
                subject = f"{PARTITIONED_PREFIX}.{self.partition[0]}.*.*"
                queue = f"{QUEUE_GROUP}-{self.partition[0]}"
            self._sub = await self.nc.subscribe(subject, queue=queue, cb=self._on_heartbeat,
                                                pending_msgs_limit=1_000_000, pending_bytes_limit=-1)

    async def pause_heartbeats(self) -> None:
        """Stop taking heartbeats (others in the queue group take them; a drain before shutdown)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def stop(self) -> None:
        """Stop taking heartbeats, write what is pending, stop following."""
        for duty in (self._hearing, self._writing):
            self.vitals.remove(duty.name)
        await self.pause_heartbeats()
        with contextlib.suppress(FleetError):
            await asyncio.wait_for(self.flush(), 10.0)
        if self._follower is not None:
            self._tasks.append(self._follower)
            self._follower = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.checkpoints is not None:
            await self.checkpoints.close()

    def loops(self) -> list[asyncio.Task[None]]:
        """The loops that must run while this service serves (shared.liveness.keep_alive)."""
        return [*([self._follower] if self._follower is not None else []), *self._tasks]

    def image(self) -> DriftImage | None:
        """The state for a checkpoint, at a moment when it is exactly the log's events through
        `_next_seq - 1` (None otherwise): no decision waits to be written and every event this
        instance wrote has come back through the follower."""
        if self._pending or self._write_lock.locked() or self._last_written >= self._next_seq:
            return None
        return DriftImage(self.devices, self._seqs, self.aliases)

    def restore(self, image: DriftImage) -> None:
        """Take the devices from a checkpoint."""
        self.devices, self._seqs, self.aliases = image.devices, image.seqs, dict(image.aliases)

    def owns(self, device_id: str) -> bool:
        """Whether this instance is the one that watches the device."""
        part = self.partition
        return part is None or partition_of(device_id, part[1]) == part[0]

    @property
    def pending(self) -> int:
        """Events decided but not yet appended."""
        return sum(len(v) for v in self._pending.values())

    # --- commands -------------------------------------------------------------------------------

    def register(self, service: CommandService) -> None:
        """Route this service's commands."""
        service.route("reconcile", Reconcile, self.on_reconcile)
        service.route("acknowledge", Acknowledge, self.on_acknowledge)

    def command_services(self) -> list[CommandService]:
        """`fleet.cmd.drift.*`, and for a partitioned instance also `fleet.cmd.drift-<k>.*`, to
        which an instance that does not own a device forwards the command."""
        names = ["drift"] + ([f"drift-{self.partition[0]}"] if self.partition is not None else [])
        services = [CommandService(self.nc, name) for name in names]
        for service in services:
            self.register(service)
        return services

    async def on_reconcile(self, cmd: Reconcile, ctx: Context) -> Outcome:
        """An operator's forced reconciliation: a stuck device's tries start over."""
        return await self._operate(cmd, ctx, "reconcile", ForceReconcile(cmd.reason))

    async def on_acknowledge(self, cmd: Acknowledge, ctx: Context) -> Outcome:
        """An operator accepts a device's drift: no more reconciliation until it ends."""
        return await self._operate(cmd, ctx, "acknowledge", AcknowledgeDrift(cmd.reason))

    async def _operate(self, cmd: Reconcile | Acknowledge, ctx: Context, route: str,
                       command: ForceReconcile | AcknowledgeDrift) -> Outcome:
        """Decide an operator's command on the device's current state and append what it causes
        (forwarded to the instance that owns the device when the fleet is partitioned)."""
        check_id(cmd.device_id, "device_id")
        if self.partition is not None and not self.owns(cmd.device_id):
            owner = partition_of(cmd.device_id, self.partition[1])
            reply = await CommandClient(self.nc, actor=cmd.actor).send(
                f"drift-{owner}", route, cmd)
            return Outcome([Appended(e.subject, e.seq) for e in reply.events], reply.result)
        async with self._write_lock:
            await self._write_pending_locked()  # what was decided before goes first
            state = self.devices.get(cmd.device_id) or initial(cmd.device_id)
            events = decide(state, command, self.clock(), self.policy)
            envelopes = [seal(e, actor=cmd.actor, at=ctx.now, causation_id=cmd.command_id,
                              correlation_id=cmd.command_id) for e in events]
            subject = event_subject("observed", cmd.device_id)
            self._own.update(e.id for e in envelopes)
            appended = await self.log.append(subject, envelopes, self._seqs.get(cmd.device_id, 0))
            self._seqs[cmd.device_id] = appended[-1].seq
            state = self.devices.get(cmd.device_id) or state  # heartbeats may have moved it meanwhile
            for event in events:
                state = evolve(state, event)
            self.devices[cmd.device_id] = state
        return Outcome(appended, DriftStanding(device_id=cmd.device_id, stuck=state.stuck,
                                               acknowledged=state.acknowledged))

    # --- heartbeats -----------------------------------------------------------------------------

    async def _on_heartbeat(self, msg: Msg) -> None:
        self.handle_heartbeat(msg.subject, msg.data)

    def handle_heartbeat(self, subject: str, data: bytes) -> None:
        """Decode, check and fold one heartbeat; queue events if it revealed a change."""
        if len(data) > HEARTBEAT_MAX_BYTES:  # refused before any decoding work
            self._drop(OVERSIZED)
            return
        try:
            hb = HEARTBEAT_DECODER.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._drop(MALFORMED)
            return
        hb = heartbeat_in_current_form(hb, self.aliases)
        tokens = subject.split(".")  # fleet.hb.<site>.<device> or fleet.hbp.<n>.<site>.<device>
        if len(tokens) < 4 or tokens[-1] != hb.device_id or tokens[-2] != hb.site:
            self._drop(SUBJECT_MISMATCH)
            return
        state = self.devices.get(hb.device_id)
        if state is None:
            self._drop(reject(initial(hb.device_id), hb) or MALFORMED)
            return
        reason = reject(state, hb)
        if reason is not None:
            self._drop(reason)
            return
        now = self.clock()
        if steady(state, hb):
            self.devices[hb.device_id] = msgspec.structs.replace(state, last_seen=now, last_seq=hb.seq)
            self.stats.accepted += 1
            return
        try:
            events = decide(state, Beat(hb), now, self.policy)
        except Exception:  # isolated to this heartbeat: logged and counted, the next one is judged afresh
            log.exception("drift: heartbeat of device %s could not be decided", hb.device_id)
            self.stats.errors += 1
            return
        if events:
            state = self._emit(state, events, now)
        self.devices[hb.device_id] = observe(state, hb, now)
        self.stats.accepted += 1

    def _drop(self, reason: str) -> None:
        self.stats.dropped[reason] = self.stats.dropped.get(reason, 0) + 1

    # --- deciding and appending ----------------------------------------------------------------

    def _emit(self, state: DeviceState, events: list[ObservedEvent], now: float) -> DeviceState:
        """Fold our own events into the state at once and queue them for the writer; they are
        stamped with `now`, the injected clock's time of the decision."""
        at = datetime.fromtimestamp(now, UTC)
        queue = self._pending.setdefault(state.device_id, [])
        counts = self.stats.events
        for event in events:
            state = evolve(state, event)
            name = type(event).__name__
            counts[name] = counts.get(name, 0) + 1
            envelope = seal(event, actor=ACTOR, at=at)
            self._own.add(envelope.id)
            queue.append(envelope)
            if isinstance(event, ReconcileAttempted):
                self._reconcile[state.device_id] = event.revision
        self._wake.set()
        return state

    def _decide(self, device_id: str, command: Command, now: float) -> None:
        state = self.devices[device_id]
        events = decide(state, command, now, self.policy)
        if events:
            self.devices[device_id] = self._emit(state, events, now)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_every)
            self.tick()

    def tick(self) -> None:
        """One pass of the devices' clocks at the injected clock's time: offline, the end of the
        drift grace, reconcile retries; what it decides is queued for the writer."""
        now = self.clock()
        if not self.nc.is_connected:
            # We hear nobody while our own connection is down: that says nothing about devices.
            self._outage = True
            return
        if self._outage:  # back: every device gets a full offline window again, as after a restart
            self._outage = False
            self._restart_follow()
            for device_id, state in self.devices.items():
                self.devices[device_id] = resume(state, now)
            log.info("drift: NATS connection back; liveness windows restarted")
            return
        self._keep_duties(now)
        tick = Tick()
        policy = self.policy
        for device_id, state in self.devices.items():
            if tick_due(state, now, policy):
                try:  # one device that cannot be decided never stops the others' clocks
                    events = decide(state, tick, now, policy)
                except Exception:
                    log.exception("drift: tick of device %s failed; the others go on", device_id)
                    self.stats.errors += 1
                    continue
                if events:
                    self.devices[device_id] = self._emit(state, events, now)

    def _keep_duties(self, now: float) -> None:
        """Heartbeats were heard since the last tick, or none were due (no device online);
        nothing waits to be appended."""
        accepted = self.stats.accepted
        if accepted != self._heard or not any(s.online for s in self.devices.values()):
            self._hearing.done(now, f"{accepted} heartbeats handled")
        self._heard = accepted
        if not self._pending:
            self._writing.done(now)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._write_pending()
            except FleetError as exc:  # NATS away: keep the events, try again shortly
                self.stats.append_failures += 1
                log.warning("drift: could not append observed events, will retry: %s", exc)
                await asyncio.sleep(1.0)
                self._wake.set()
            except Exception:
                log.exception("drift: writer failed")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def flush(self) -> None:
        """Append everything decided so far, and wait for a write in flight (tests, shutdown)."""
        while True:
            await self._write_pending()
            if not self._pending and not self._reconcile:
                return

    async def _write_pending(self) -> None:
        async with self._write_lock:  # one writer at a time; flush() waits for one in flight
            await self._write_pending_locked()

    async def _write_pending_locked(self) -> None:
        # Take what is pending now; events decided while this append is in flight wait for the next.
        batch, self._pending = self._pending, {}
        items = list(batch.items())
        settled: set[str] = set()  # devices whose events landed, or were found in the log or refused

        def landed(chunk: list[tuple[str, list[Envelope]]], appended: list[Appended]) -> None:
            for where in appended:
                self._seqs[parse_event_subject(where.subject)[1]] = where.seq
                self._last_written = max(self._last_written, where.seq)
            self.stats.appended += len(appended)
            self._writing.done()
            settled.update(device_id for device_id, _ in chunk)

        async def refused(chunk: list[tuple[str, list[Envelope]]], exc: Conflict) -> None:
            await self._resynchronise(chunk, exc)
            settled.update(device_id for device_id, _ in chunk)

        try:
            async with Pipeline[list[tuple[str, list[Envelope]]]](self.log, landed=landed, refused=refused) as pipe:
                taken = 0
                while taken < len(items):
                    chunk: list[tuple[str, list[Envelope]]] = []
                    size = 0
                    while taken < len(items) and not (chunk and size + len(items[taken][1]) > MAX_BATCH):
                        chunk.append(items[taken])
                        size += len(items[taken][1])
                        taken += 1
                    await pipe.send([Write(event_subject("observed", d), envs, self._seqs.get(d, 0))
                                     for d, envs in chunk], chunk)
        finally:
            rest = [(d, envs) for d, envs in items if d not in settled]
            if rest:  # not written (NATS away): put back in front of anything decided since
                later, self._pending = self._pending, dict(rest)
                for device_id, envelopes in later.items():
                    self._pending.setdefault(device_id, []).extend(envelopes)
        if self._reconcile:
            await self._put_reconciles()

    async def _resynchronise(self, chunk: list[tuple[str, list[Envelope]]], exc: Conflict) -> None:
        """A batch was refused: find out, device by device, whether our events are in the log
        (an earlier attempt landed) or someone else wrote (this service should be the only writer
        of `fleet.evt.observed.*`; then our events are dropped and the log wins)."""
        lost = 0
        for device_id, envelopes in chunk:
            subject = event_subject("observed", device_id)
            recorded, last = await self.log.load(subject, after_seq=self._seqs.get(device_id, 0))
            ours = {e.id for e in envelopes}
            if not ours.issubset({r.envelope.id for r in recorded}):
                lost += 1
            self._seqs[device_id] = last
        if lost:
            self.stats.append_failures += 1
            log.error("drift: observed events of %d devices refused (%s); the log wins", lost, exc)

    async def _put_reconciles(self) -> None:
        wanted, self._reconcile = self._reconcile, {}
        try:
            await self._put_values(wanted)
        except BaseException:
            for device_id, revision in wanted.items():  # not put: try again (newer wins)
                self._reconcile.setdefault(device_id, revision)
            raise

    async def _put_values(self, wanted: dict[str, int]) -> None:
        values: list[DesiredState] = []
        items = list(wanted.items())
        for start in range(0, len(items), 200):
            part = items[start:start + 200]
            current = await asyncio.gather(*(get_desired(self.nc, d) for d, _ in part))
            for (device_id, revision), value in zip(part, current, strict=True):
                state = self.devices.get(device_id)
                if (value is None or state is None
                        or current_hash(self.aliases, value.config_hash) != state.desired_config_hash
                        or value.snapshot_id != state.desired_snapshot_id):
                    # The KV value is not (yet) the desired state the log names: nothing to re-put.
                    self.stats.reconciles_skipped += 1
                    continue
                values.append(msgspec.structs.replace(value, revision=revision))
        if values:
            await put_desired(self.nc, values)
            self.stats.reconciles_put += len(values)

    # --- following the log ------------------------------------------------------------------------

    def _restart_follow(self) -> None:
        """Follow the log anew from the next sequence (after an outage the ordered consumer may
        be gone with the server's restart)."""
        if self._follower is not None:
            self._follower.cancel()
        self._follower = asyncio.create_task(self._follow(0), name="drift-follow")  # ready already

    async def _follow(self, end: int) -> None:
        """Apply the followed families from `_next_seq` on; ready once through `end`."""
        if end < self._next_seq:
            self._ready.set()
        while True:
            next_seq = self._next_seq
            try:
                async for recorded in self.log.replay(next_seq, follow=True, subjects=_FOLLOWED):
                    next_seq = self._next_seq = recorded.seq + 1
                    try:
                        self._apply(recorded, live=self._ready.is_set())
                    except Exception:  # one bad event must not stop the view
                        log.exception("drift: could not apply event %d", recorded.seq)
                    if recorded.seq >= end and not self._ready.is_set():
                        self._ready.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection went away: follow again from where we were
                if self.nc.is_closed:  # ... unless it will never come back: end, and the part with it
                    raise
                log.warning("drift: following the log failed (%r); resuming at %d", exc, next_seq)
                await asyncio.sleep(1.0)

    def _apply(self, recorded: Recorded, *, live: bool) -> None:
        family, device_id = parse_event_subject(recorded.subject)
        if family == "snapshot":
            if isinstance(recorded.event, SnapshotCreated):
                self.aliases.update(hash_aliases(recorded.event.config, recorded.event.overrides))
            return
        if family not in _FAMILIES or not self.owns(device_id):
            return
        if family == "observed" and recorded.envelope.id in self._own:
            self._own.discard(recorded.envelope.id)  # already folded when we decided it
            return
        event = recorded.event
        if event is None:
            return
        event = in_current_form(event, self.aliases)
        state = self.devices.get(device_id) or initial(device_id)
        self.devices[device_id] = evolve(state, event)
        if family == "observed":
            self._seqs[device_id] = recorded.seq
        elif live and isinstance(event, DesiredStateAssigned):
            self._decide(device_id, DesiredChanged(), self.clock())
        elif live and isinstance(event, DeviceRetired):
            self._decide(device_id, Retired(), self.clock())
