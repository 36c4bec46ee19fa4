"""The rollout service's I/O: it rebuilds rollouts and its view of the fleet from the log, serves
`fleet.cmd.rollout.*`, and ticks every active rollout — appending the decided events (desired
state for devices and the rollout's own events, one atomic batch per chunk) and writing the
devices' desired-state KV values after the log has them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.rollout import domain, whatif
from services.rollout.domain import FleetView, Rollout
from services.rollout.fleet_index import DeviceInfo, FleetIndex, SnapshotInfo
from shared import metrics
from shared.aggregates import AggregateStore, StoreImage
from shared.aio import wait_set
from shared.appending import Pipeline
from shared.checkpoint import Checkpoints
from shared.commands import CommandService, Context, Outcome
from shared.configs import effective_config
from shared.contract.rollout import (
    ActOnRollout,
    GateSummary,
    GetRollout,
    ListRollouts,
    RollbackResult,
    RollbackRollout,
    RollbackStep,
    RolloutList,
    RolloutStatus,
    ScheduleEntry,
    StartResult,
    StartRollout,
    WaveProgress,
    WhatIfGates,
    WhatIfResult,
    check_waves,
)
from shared.desired import ensure_bucket, put_desired
from shared.devices import HEARTBEAT_DECODER, EncodedDesiredState
from shared.envelope import Envelope, Event, seal
from shared.errors import Conflict, NotFound, Unavailable
from shared.eventlog import Appended, EventLog, Recorded, Write
from shared.events.desired import DesiredStateAssigned
from shared.events.rollout import (
    RolloutDevicesAssigned,
    RolloutDevicesRestored,
    RolloutGateEvaluated,
    RolloutStarted,
)
from shared.ids import check_id
from shared.lease import Holding
from shared.liveness import Duty, Vitals
from shared.selectors import parse as parse_selector
from shared.subjects import HEARTBEATS_PREFIX, aggregate_wildcard, event_subject
from shared.times import format_time, parse_time, utcnow
from shared.wire import Command

log = logging.getLogger(__name__)
ACTOR = "service:rollout"
_JSON = msgspec.json.Encoder()
PIPELINE = 4  # atomic batches of one commit in flight at once
REPLAY_BATCH = 1_000  # events folded at a time while rebuilding at start
# What the rollout service follows: the fleet it rolls over, its own rollouts (another instance's
# too) and the devices' observed state. Not `desired` (it writes those itself) nor `audit`.
FOLLOWED = [aggregate_wildcard(family) for family in ("site", "device", "snapshot", "rollout", "observed")]
STARTED_FROM = [*FOLLOWED, aggregate_wildcard("desired")]  # at start: its own desired state too


class RolloutImage(msgspec.Struct, frozen=True):
    """The rollout service's state in a checkpoint: its fleet index (but `view.site_of`, which is
    every device's `DeviceInfo.site` again: rebuilt on restore, one million strings less to
    decode) and its rollouts."""

    devices: dict[str, DeviceInfo]
    snapshots: dict[str, SnapshotInfo]
    view: FleetView
    desired_seq: dict[str, int]
    rollouts: StoreImage[Rollout]
    started_at: dict[str, datetime]


class RolloutService:
    """Owns rollout aggregates and desired state; one instance per deployment."""

    def __init__(self, nc: NATS, eventlog: EventLog, *, tick_interval: float = 0.25,
                 lease: Holding | None = None, checkpoints: Checkpoints[RolloutImage] | None = None,
                 vitals: Vitals | None = None, tick_bound: float = 60.0, round_seconds: float = 10.0) -> None:
        """`checkpoints`: where the state is checkpointed (written by the lease holder only).
        `vitals`: where the `tick` duty is reported (shared.liveness): the tick loop ran, or a
        commit made progress, within `tick_bound` seconds."""
        self.nc = nc
        # With two or more instances, only the holder of this lease ticks (DESIGN §13); commands
        # are served by every instance.
        self.lease = lease
        self.log = eventlog
        self.tick_interval = tick_interval
        self.round_seconds = round_seconds  # a round of assignments settles in about one heartbeat interval
        self.index = FleetIndex()
        self.store: AggregateStore[Rollout] = AggregateStore(eventlog, "rollout", domain.initial, domain.evolve)
        self.commands = CommandService(nc, "rollout")
        self.checkpoints = checkpoints
        if checkpoints is not None:
            checkpoints.may_write = lambda: self.ticking
        self._lock = asyncio.Lock()
        self.vitals = vitals or Vitals("rollout", "")
        self._ticked = Duty("tick", tick_bound)  # reported once it serves (shared.liveness)
        self._tasks: list[asyncio.Task[None]] = []
        self._watch: set[str] = set()
        self._heartbeats: Subscription | None = None
        self.applied_seq = 0
        # Every followed event through this sequence is in (a commit's own events may be in
        # already too: folding them again changes nothing), so a checkpoint may be taken there.
        self.followed_seq = 0
        self._progressed = asyncio.Event()
        self._effective: dict[tuple[str, str], msgspec.Raw] = {}
        self._started_at: dict[str, datetime] = {}  # rollout -> its RolloutStarted's time (what-if --since)
        self.tick_errors: dict[str, int] = {}  # rollout id -> ticks that raised (logged, retried)

    # --- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild from the log, then serve commands, follow new events and tick."""
        await ensure_bucket(self.nc)
        started = time.perf_counter()
        caught_up = await self.log.last_stream_seq()
        from_seq = await self.checkpoints.resume(self.restore) if self.checkpoints else 1
        replayed = 0
        if from_seq <= caught_up:
            batch: list[tuple[Recorded, Event | None]] = []  # folded together: taken devices marked per batch
            async for recorded in self.log.replay(from_seq, caught_up, subjects=STARTED_FROM):
                batch.append((recorded, recorded.event))
                if len(batch) == REPLAY_BATCH:
                    self._fold(batch)
                    replayed, batch = replayed + len(batch), []
            self._fold(batch)
            replayed += len(batch)
        log.info("rollout ready: %d events replayed after sequence %d, %d rollouts, %d devices, in %.2f s",
                 replayed, from_seq - 1, len(self.store.slots), len(self.index.devices),
                 time.perf_counter() - started)
        # Every followed event through caught_up is in now (a checkpoint's rollouts alone may
        # end far earlier: applied_seq must not wait for events it already holds).
        self.applied_seq = self.followed_seq = max(self.applied_seq, caught_up)
        await self._rewrite_kv_of_active()
        for route, kind, handler in (
            ("start", StartRollout, self._start),
            ("pause", ActOnRollout, self._act(lambda state, cmd: domain.pause(state, cmd.reason))),
            ("resume", ActOnRollout, self._act(lambda state, cmd: domain.resume(state))),
            ("abort", ActOnRollout, self._act(lambda state, cmd: domain.abort(state, cmd.reason))),
            ("promote", ActOnRollout, self._act(lambda state, cmd: domain.promote(state))),
            ("ignore_windows", ActOnRollout, self._act(lambda state, cmd: domain.ignore_windows(state, cmd.reason))),
            ("rollback", RollbackRollout, self._rollback), ("get", GetRollout, self._get),
            ("list", ListRollouts, self._list),
            ("what_if", WhatIfGates, self._what_if),
        ):
            self.commands.route(route, kind, handler)  # type: ignore[arg-type]  # a table of (type, handler of that type)
        await self.commands.start()
        self.vitals.add(self._ticked)
        self._tasks = [asyncio.create_task(self._follow(caught_up + 1), name="rollout-follow"),
                       asyncio.create_task(self._tick_forever(), name="rollout-tick")]
        if self.checkpoints is not None:
            self._tasks.append(asyncio.create_task(self.checkpoints.run(lambda: self.followed_seq, self.image)))

    @property
    def loops(self) -> list[asyncio.Task[None]]:
        """The loops that must run while this service serves (shared.liveness.keep_alive)."""
        return list(self._tasks)

    async def stop(self) -> None:
        """Stop serving and ticking."""
        self.vitals.remove(self._ticked.name)
        await self.commands.stop()
        await self._listen_to_heartbeats(False)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.checkpoints is not None:
            await self.checkpoints.close()

    def image(self) -> RolloutImage:
        """The fleet index and the rollouts, for a checkpoint."""
        index = self.index
        view = msgspec.structs.replace(index.view, site_of={})
        return RolloutImage(index.devices, index.snapshots, view, index.desired_seq,
                            self.store.image(), self._started_at)

    def restore(self, image: RolloutImage) -> None:
        """Take the fleet index and the rollouts from a checkpoint."""
        self.index.devices, self.index.snapshots = image.devices, image.snapshots
        self.index.view, self.index.desired_seq = image.view, image.desired_seq
        self.index.view.site_of = {device: info.site for device, info in image.devices.items()}
        self.store.restore(image.rollouts)
        self._started_at = image.started_at

    def _apply(self, recorded: Recorded, event: Event | None = None) -> None:
        """Fold one event in (`event`: the recorded one, when the caller has it decoded)."""
        self._fold([(recorded, event if event is not None else recorded.event)])

    def _fold(self, landed: Iterable[tuple[Recorded, Event | None]]) -> None:
        """Fold events in, in stream order. A desired state from another rollout (or none) that
        replaces the one a rollout gave makes that rollout count the device as it stands now, from
        here on (`domain.taken`). The marks wait and are made once per rollout for all its devices
        (a commit takes up to 999 devices per chunk); they are made before any event that could
        change how they judge: an observed or registry event, or one of a marked rollout's own."""
        taken: dict[str, list[str]] = {}
        for recorded, event in landed:
            self.applied_seq = max(self.applied_seq, recorded.seq)
            if event is None:
                continue
            if taken and not isinstance(event, DesiredStateAssigned) and (
                    event.aggregate != "rollout" or event.aggregate_id in taken):
                self._mark_taken(taken)
                taken = {}
            if event.aggregate == "rollout":
                if isinstance(event, RolloutStarted):
                    self._started_at[event.rollout_id] = parse_time(recorded.envelope.at)
                self.store.apply(recorded, event)
                continue
            if (isinstance(event, DesiredStateAssigned)
                    and recorded.seq > self.index.desired_seq.get(event.device_id, 0)):  # not folded in yet
                loser = domain.taken_from(self.index.view.desired.get(event.device_id), event)
                if loser is not None:
                    taken.setdefault(loser, []).append(event.device_id)
            self.index.apply(recorded.seq, event)
        self._mark_taken(taken)
        self._progressed.set()

    def _mark_taken(self, taken: dict[str, list[str]]) -> None:
        for loser, devices in taken.items():
            slot = self.store.slots.get(loser)
            if slot is not None:
                slot.state = domain.taken(slot.state, devices, self.index.view)

    async def caught_up(self, timeout: float = 10.0) -> None:
        """Wait until this service has seen everything in the log as of now (read-your-writes: a
        client that just created a snapshot or imported devices can start a rollout on them).
        The follower skips desired events, so the head is the newest event it does read."""
        head = max(await asyncio.gather(*(self.log.last_seq(subjects) for subjects in FOLLOWED)))
        deadline = asyncio.get_running_loop().time() + timeout
        while self.applied_seq < head:
            self._progressed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise Unavailable(f"the rollout service is {head - self.applied_seq} events behind the log; "
                                  "try again shortly")
            await wait_set(self._progressed, remaining)

    async def _follow(self, from_seq: int) -> None:
        # Every family but desired state, which only this service writes: its own events are
        # folded in by the commit that appended them, so reading 100,000 of them back during a
        # large assignment would only cost time. Under the lock: a commit's events must not
        # become visible here before its KV values are written.
        async for recorded in self.log.replay(from_seq, follow=True, subjects=FOLLOWED):
            async with self._lock:
                event = recorded.event
                if (isinstance(event, RolloutDevicesAssigned | RolloutDevicesRestored)
                        and recorded.seq > self.store.get(event.rollout_id).seq):
                    # Not written by this process: an earlier instance's last batch landed after
                    # this one caught up. Its desired events came in the same atomic batch, but
                    # their KV values may never have been written.
                    await self._adopt(event.devices)
                self._apply(recorded, event)
                self.followed_seq = recorded.seq

    async def _adopt(self, devices: Sequence[str]) -> None:
        """Fold in the desired events of `devices` this process has not seen, and write their KV
        values."""
        landed = await self._load_desired(devices)
        await self._put_kv([e for e in landed if e.snapshot_id in self.index.snapshots])

    async def _load_desired(self, devices: Sequence[str]) -> list[DesiredStateAssigned]:
        """Fold in the desired events of `devices` newer than this process has; returns them."""
        landed: list[DesiredStateAssigned] = []
        for device in devices:
            recorded, _ = await self.log.load(event_subject("desired", device),
                                              after_seq=self.index.desired_seq.get(device, 0))
            for item in recorded:
                self._apply(item)
                if isinstance(item.event, DesiredStateAssigned):
                    landed.append(item.event)
        return landed

    async def _tick_forever(self) -> None:
        pause = self.tick_interval
        while True:
            await asyncio.sleep(pause)
            self._ticked.done()  # (a standby's duty is to be ready: its loop running is all)
            if not self.ticking:
                continue
            try:
                deciding = await self.tick_all(utcnow())
            except Exception:  # isolated: logged and retried on the next tick, never fatal
                log.exception("rollout tick failed")
                deciding = 0.0
            # Deciding looks at every device of a wave (~0.2 s for 100,000): for large waves tick
            # less often, so deciding takes at most a fifth of this process's time and the
            # follower and commands get the rest.
            pause = max(self.tick_interval, 4 * deciding)

    @property
    def ticking(self) -> bool:
        """Does this instance drive the rollouts now (it holds the lease, or there is none)?"""
        return self.lease is None or self.lease.held

    async def tick_all(self, now: datetime) -> float:
        """Advance every running or rolling-back rollout; returns the seconds spent deciding."""
        deciding = 0.0
        async with self._lock:
            watch: set[str] = set()
            for rollout_id, slot in list(self.store.slots.items()):
                state = slot.state
                if not self.ticking:  # the fence: the lease ran out while ticking
                    break
                if state.status in ("running", "rolling_back"):
                    started = time.perf_counter()
                    try:  # one rollout that cannot advance never holds back the others
                        events = domain.tick(state, self.index.view, now)
                        deciding += time.perf_counter() - started
                        if events:
                            decided = time.perf_counter()
                            await self._commit(rollout_id, events, None, now)
                            log.info("rollout %s: %d events (%s) decided in %.3fs, committed in %.3fs",
                                     rollout_id, len(events), type(events[-1]).__name__, decided - started,
                                     time.perf_counter() - decided)
                    except Exception:
                        log.exception("rollout %s: tick failed; the other rollouts go on", rollout_id)
                        self.tick_errors[rollout_id] = self.tick_errors.get(rollout_id, 0) + 1
                        metrics.ROLLOUT_TICK_ERRORS.labels(rollout_id).inc()
                        state = slot.state
                if state.active and state.waves and state.spec is not None and state.spec.gates.metrics:
                    watch.update(state.waves[state.wave])
            self._watch = watch
            await self._listen_to_heartbeats(bool(watch))
        return deciding

    async def _listen_to_heartbeats(self, wanted: bool) -> None:
        """Heartbeats carry the metrics that metric gates need; the subscription exists only
        while some active wave has such a gate, so an idle service does not read the fleet's
        heartbeat stream."""
        if wanted and self._heartbeats is None:
            self._heartbeats = await self.nc.subscribe(f"{HEARTBEATS_PREFIX}.>", cb=self._on_heartbeat)
        elif not wanted and self._heartbeats is not None:
            await self._heartbeats.unsubscribe()
            self._heartbeats = None

    async def _on_heartbeat(self, msg: Msg) -> None:
        device = msg.subject.rsplit(".", 1)[-1]
        if device not in self._watch:
            return
        try:
            heartbeat = HEARTBEAT_DECODER.decode(msg.data)
        except msgspec.DecodeError:
            return  # the drift service counts malformed heartbeats; metrics simply skip them
        self.index.observed(device).metrics = dict(heartbeat.metrics)

    # --- appending ------------------------------------------------------------------------------

    async def _commit(self, rollout_id: str, events: Sequence[Event], command_id: str | None,
                      now: datetime, actor: str = ACTOR) -> list[Appended]:
        """Append decided events in groups (desired events, then the rollout events naming them:
        one atomic batch each) and write the devices' KV values, then fold everything in.

        Chunk groups (desired events and the one RolloutDevicesAssigned/Restored that names them)
        are pipelined, up to PIPELINE batches in flight: a batch's round trip, not this process's
        CPU, is what bounds a large assignment. Every other group waits until all earlier ones
        have landed and carries the rollout's expected sequence, so their order in the log is the
        decided order; a chunk sent while others are in flight carries only its devices' expected
        sequences (they alone guard against a device being assigned twice, and the chunks of one
        commit are independent). A group's KV values are written once the log has it, and the
        state advances only once all KV writes are done, so a reply never claims more than the
        devices can see. A refused group fails the commit, after the devices it named and the
        rollout are read again from the log."""
        at = format_time(now)
        subject = event_subject("rollout", rollout_id)
        kv_writes: list[asyncio.Task[None]] = []
        stale: list[str] = []  # devices of refused groups: read again from the log

        def landed(group: _Group, _: list[Appended]) -> None:
            self._ticked.done()  # a long commit is a tick making progress
            if group.desired:  # the log has them: now the devices may see them
                kv_writes.append(asyncio.create_task(self._put_kv(group.desired)))

        async def refused(group: _Group, exc: Conflict) -> None:
            stale.extend(e.device_id for e in group.desired)
            raise exc

        pipeline = Pipeline[_Group](self.log, window=PIPELINE, landed=landed, refused=refused)
        try:
            async with pipeline:
                for events_of_group in _groups(events):
                    desired = [e for e in events_of_group if isinstance(e, DesiredStateAssigned)]
                    own = [e for e in events_of_group if not isinstance(e, DesiredStateAssigned)]
                    chunk = len(own) == 1 and isinstance(own[0], RolloutDevicesAssigned | RolloutDevicesRestored)
                    if not chunk:
                        await pipeline.drain()  # in the decided order, after everything before it
                    group = _Group([*desired, *own], [
                        seal(e, actor=actor, at=at, causation_id=command_id,
                             correlation_id=command_id or rollout_id) for e in [*desired, *own]])
                    writes = [Write(e.subject, [envelope], self.index.desired_seq.get(e.device_id, 0))
                              for e, envelope in zip(desired, group.envelopes[:len(desired)], strict=True)]
                    if own:
                        expected = max(self.store.get(rollout_id).seq, pipeline.last.get(subject, 0))
                        writes.append(Write(subject, group.envelopes[len(desired):],
                                            None if pipeline.in_flight else expected))
                    await pipeline.send(writes, group)
        finally:
            await asyncio.gather(*kv_writes)
            landed_events = [(Recorded(where.seq, where.subject, envelope), event)
                             for group, stored in pipeline.stored
                             for where, envelope, event in zip(stored, group.envelopes, group.events, strict=True)]
            self._fold(sorted(landed_events, key=lambda pair: pair[0].seq))  # in the order stored
            if stale:
                await self._resync(stale, rollout_id)
        return [where for _, stored in pipeline.stored for where in stored]

    async def _resync(self, devices: list[str], rollout_id: str) -> None:
        await self._load_desired(devices)
        await self.store.reload(rollout_id)

    def _encoded_config(self, snapshot_id: str, site: str) -> msgspec.Raw:
        """A site's effective config of a snapshot as JSON, encoded once for all its devices."""
        key = (snapshot_id, site)
        config = self._effective.get(key)
        if config is None:
            snap = self.index.snapshots[snapshot_id]
            config = self._effective[key] = msgspec.Raw(
                _JSON.encode(effective_config(snap.config, snap.overrides, site)))
        return config

    async def _put_kv(self, desired: Sequence[DesiredStateAssigned]) -> None:
        values = [EncodedDesiredState(device_id=e.device_id, snapshot_id=e.snapshot_id,
                                      config=self._encoded_config(e.snapshot_id, e.site_id),
                                      config_hash=e.config_hash, rollout_id=e.rollout_id, revision=e.revision)
                  for e in desired]
        await put_desired(self.nc, values)
        metrics.ROLLOUT_ASSIGNMENTS.inc(len(values))

    async def _rewrite_kv_of_active(self) -> None:
        """After a restart, write again the KV values of devices in active rollouts: a crash
        between an append and its KV write must not leave a device without its desired value."""
        pending: list[DesiredStateAssigned] = []
        for slot in self.store.slots.values():
            if not slot.state.active:
                continue
            for device in slot.state.assigned:
                desired = self.index.view.desired.get(device)
                if desired is None or desired.snapshot_id not in self.index.snapshots:
                    continue
                pending.append(DesiredStateAssigned(
                    device_id=device, site_id=self.index.view.site_of.get(device, ""),
                    snapshot_id=desired.snapshot_id, config_hash=desired.config_hash,
                    revision=desired.revision, rollout_id=desired.rollout_id))
        if pending:
            await self._put_kv(pending)

    # --- commands -------------------------------------------------------------------------------

    async def _state(self, rollout_id: str) -> Rollout:
        """The rollout's state; one this instance has not seen is looked for again once it has
        followed the log to its head: another instance may have started it a moment ago, and its
        client may ask this one next (read your writes across instances)."""
        check_id(rollout_id, "rollout_id")
        state = self.store.get(rollout_id).state
        if state.spec is None:
            await self.caught_up()
            state = self.store.get(rollout_id).state
        if state.spec is None:
            raise NotFound(f"rollout {rollout_id} does not exist", field="rollout_id")
        return state

    async def _run(self, cmd: Command, rollout_id: str, decide: Any, ctx: Context) -> Outcome:
        async with self._lock:
            done = self.store.already_done(cmd.command_id, cmd.actor)
            if done is not None:
                return Outcome(done, self.describe(self.store.get(rollout_id).state))
            events = decide()
            appended = await self._commit(rollout_id, events, cmd.command_id, ctx.now, cmd.actor)
            return Outcome(appended, self.describe(self.store.get(rollout_id).state))

    async def _start(self, cmd: StartRollout, ctx: Context) -> Outcome:
        rollout_id = cmd.rollout_id or "r-" + hashlib.sha256(cmd.command_id.encode()).hexdigest()[:10]
        selector = parse_selector(cmd.target, "target")
        canary, percents = cmd.canary.check() if cmd.canary else None, check_waves(cmd.waves)
        in_flight, in_flight_percent = domain.in_flight_rule(cmd.max_in_flight, cmd.max_in_flight_percent)
        await self.caught_up()
        async with self._lock:
            done = self.store.already_done(cmd.command_id, cmd.actor)
            if done is not None:
                return Outcome(done, self.describe(self.store.get(rollout_id).state))
            devices = {d: info.site for d, info in self.index.devices.items()
                       if not info.retired and selector.matches(info.labels, info.site, info.kind)}
            events = domain.start(
                rollout_id, snapshot_id=cmd.snapshot_id, snapshot=self.index.snapshots.get(cmd.snapshot_id),
                target=cmd.target, devices=devices, others=(slot.state for slot in self.store.slots.values()),
                canary=canary, percents=percents,
                max_in_flight=in_flight, max_in_flight_percent=in_flight_percent, bake_seconds=cmd.bake_seconds,
                apply_timeout_seconds=cmd.apply_timeout_seconds,
                gates=cmd.gates(), on_failure=cmd.on_failure, approve_after=[n - 1 for n in cmd.approve_after],
                state=self.store.get(rollout_id).state, not_before=cmd.not_before,
                ignore_windows=cmd.ignore_windows, rollback_in_windows=cmd.rollback_in_windows)
            if cmd.dry_run:
                preview = domain.initial(rollout_id)
                for event in events:
                    preview = domain.evolve(preview, event)
                hashes = preview.spec.config_hashes if preview.spec else {}
                schedule = [msgspec.convert({**entry, "wave": entry["wave"] + 1}, ScheduleEntry)
                            for entry in domain.expected_schedule(preview, self.index.view, ctx.now,
                                                                  round_seconds=self.round_seconds,
                                                                  commit_rate=domain.COMMIT_RATE)]
                ends = schedule[-1].bake_ends if schedule else None
                expected = (parse_time(ends) - ctx.now).total_seconds() if ends else None
                return Outcome((), StartResult(**msgspec.structs.asdict(self.describe(preview)), dry_run=True,
                                               plan=[list(w) for w in preview.waves], config_hashes=hashes,
                                               schedule=schedule, expected_seconds=expected))
            appended = await self._commit(rollout_id, events, cmd.command_id, ctx.now, cmd.actor)
            return Outcome(appended, self.describe(self.store.get(rollout_id).state))

    def _act(self, decide: Callable[[Rollout, ActOnRollout], list[Event]]
             ) -> Callable[[ActOnRollout, Context], Awaitable[Outcome]]:
        """A handler for one operator action on a rollout."""

        async def handle(cmd: ActOnRollout, ctx: Context) -> Outcome:
            state = await self._state(cmd.rollout_id)
            return await self._run(cmd, cmd.rollout_id, lambda: decide(state, cmd), ctx)

        return handle

    async def _rollback(self, cmd: RollbackRollout, ctx: Context) -> Outcome:
        state = await self._state(cmd.rollout_id)
        hashes: dict[str, str] = {}
        if cmd.to_snapshot_id is not None:
            snap = self.index.snapshots.get(cmd.to_snapshot_id)
            if snap is None:
                raise NotFound(f"snapshot {cmd.to_snapshot_id} does not exist", field="to_snapshot_id")
            sites = {self.index.view.site_of.get(d, "") for d in state.assigned}
            hashes = {site: snap.hash_for_site(site) for site in sites}
        plan = [RollbackStep(device_id=d, from_snapshot_id=state.spec.snapshot_id if state.spec else None,
                             to_snapshot_id=s, to_config_hash=h)
                for d, s, h in domain.rollback_plan(state, cmd.to_snapshot_id, hashes, self.index.view.site_of)]
        # Said with the plan: a rollback restores at once unless the rollout was started to wait.
        in_windows = bool(state.spec and state.spec.rollback_in_windows and not state.spec.ignore_windows
                          and not state.windows_ignored)
        if cmd.plan_only:
            return Outcome((), RollbackResult(**msgspec.structs.asdict(self.describe(state)), plan=plan,
                                              in_windows=in_windows))
        outcome = await self._run(
            cmd, cmd.rollout_id,
            lambda: domain.rollback(state, cmd.reason, cmd.to_snapshot_id, hashes), ctx)
        return Outcome(outcome.appended, RollbackResult(**msgspec.structs.asdict(outcome.result), plan=plan,
                                                        in_windows=in_windows))

    async def _get(self, cmd: GetRollout, ctx: Context) -> Outcome:
        return Outcome((), self.describe(await self._state(cmd.rollout_id), ctx.now, detail=True))

    async def _what_if(self, cmd: WhatIfGates, ctx: Context) -> Outcome:
        proposal = whatif.proposal_of(cmd)
        if cmd.rollout_id is not None:
            states = [await self._state(cmd.rollout_id)]
        else:
            since = ctx.now - timedelta(seconds=cmd.since_seconds) if cmd.since_seconds else None
            states = [slot.state for rollout_id, slot in sorted(self.store.slots.items(), key=lambda i: -i[1].seq)
                      if slot.state.spec is not None
                      and (since is None or self._started_at.get(rollout_id, ctx.now) >= since)]
        results = [whatif.what_if(s.rollout_id, s.status, s.gate_history, proposal) for s in states]
        return Outcome((), WhatIfResult(results=results, **whatif.summarize(results), proposal=proposal))

    async def _list(self, cmd: ListRollouts, ctx: Context) -> Outcome:
        states = [s.state for s in sorted(self.store.slots.values(), key=lambda s: -s.seq)
                  if s.state.spec is not None]
        return Outcome((), RolloutList(rollouts=[self.describe(s) for s in states]))

    def describe(self, state: Rollout, now: datetime | None = None, *, detail: bool = False) -> RolloutStatus:
        """A rollout for replies: status, waves (from 1) and progress, last gate."""
        spec = state.spec
        progress: list[WaveProgress] | None = None
        if detail and now is not None:
            progress = []
            for number, wave in enumerate(state.waves):
                counts: dict[str, int] = {}
                for device, assignment in state.wave_assignments(number):
                    status = domain.status_of(state, device, assignment, self.index.view, now)
                    counts[status] = counts.get(status, 0) + 1
                progress.append(WaveProgress(wave=number + 1, size=len(wave), counts=counts))
        return RolloutStatus(
            rollout_id=state.rollout_id, status=state.status, phase=state.phase,  # type: ignore[arg-type]  # the domain's statuses are these literals
            wave=state.wave + 1, waves=len(state.waves), devices=state.planned,
            assigned=len(state.assigned), reason=state.reason,
            snapshot_id=spec.snapshot_id if spec else None, target=spec.target if spec else None,
            last_gate=_gate_summary(state.last_gate) if state.last_gate else None,
            not_before=spec.not_before if spec else None,
            ignore_windows=(spec.ignore_windows if spec else False) or state.windows_ignored,
            waiting_for_windows=dict(state.waiting.opens) if state.waiting else {},
            wave_progress=progress)


def _gate_summary(gate: RolloutGateEvaluated) -> GateSummary:
    """A gate verdict for replies, without the recorded distributions (up to 32 x 100 numbers each:
    `what_if` reads them; a list of rollouts must stay small)."""
    return GateSummary(wave=gate.wave + 1, passed=gate.passed, reasons=list(gate.reasons),
                       inputs=msgspec.structs.replace(gate.inputs, distributions={}), gates=gate.gates)


@dataclass
class _Group:
    """One atomic batch of a commit: its events and their envelopes, in the order written
    (desired events first, then the rollout's own)."""

    events: list[Event]
    envelopes: list[Envelope]

    @property
    def desired(self) -> list[DesiredStateAssigned]:
        return [e for e in self.events if isinstance(e, DesiredStateAssigned)]


def _groups(events: Sequence[Event]) -> list[list[Event]]:
    """Split decided events so that each group is `desired events, then rollout events`."""
    groups: list[list[Event]] = [[]]
    for event in events:
        current = groups[-1]
        if isinstance(event, DesiredStateAssigned) and current and not isinstance(current[-1], DesiredStateAssigned):
            groups.append([])
        groups[-1].append(event)
    return [g for g in groups if g]

