"""The registry's command handlers: load -> decide -> append for sites and devices, the bulk
import (atomic batches of up to 1,000 devices, a per-line report), and read-only queries answered
from the in-memory state (until the query API serves them from projections)."""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from services.registry import domain
from shared.aggregates import AggregateStore, Slot, StoreImage
from shared.appending import Pipeline
from shared.atomic import MAX_BATCH
from shared.checkpoint import Checkpoints
from shared.commands import Command, CommandService, Context, Outcome, decode_error_field
from shared.contract.registry import (
    AddDevice,
    AddSite,
    Device,
    DevicePage,
    DeviceSpec,
    GetDevice,
    GetSite,
    ImportDevices,
    ImportReport,
    ListDevices,
    ListSites,
    MoveDevice,
    Refusal,
    RelabelDevice,
    RetireDevice,
    RetireSite,
    Site,
    SiteList,
    SiteSummary,
    UpdateDevice,
    UpdateSite,
)
from shared.envelope import Event, seal
from shared.errors import Conflict, FleetError, Invalid, NotFound
from shared.eventlog import Appended, EventLog, Write
from shared.events.registry import DeviceAdded
from shared.ids import ID_RE, check_id
from shared.peers import follow_peers
from shared.selectors import Selector, parse
from shared.subjects import aggregate_wildcard, event_subject, parse_event_subject
from shared.times import format_time

log = logging.getLogger(__name__)

SERVICE = "registry"
FAMILIES = [aggregate_wildcard("site"), aggregate_wildcard("device")]
BATCHES_IN_FLIGHT = 2  # atomic batches of one import at the server at once
IMPORT_MAX_LINES = 2500  # per command, so even a reply refusing every line fits in 1 MB
LIST_LIMIT_MAX = 5000
PAGE_MAX_BYTES = 512 * 1024  # a page stops short of `limit` rather than outgrow a NATS message
REFUSAL_TEXT_MAX = 200  # a refusal echoes at most this much of a message (and 64 of an id)


class RegistryImage(msgspec.Struct, frozen=True):
    """The registry's state in a checkpoint."""

    sites: StoreImage[Site]
    devices: StoreImage[Device]


@dataclass
class _Chunk:
    """One atomic batch of an import: its lines, and the devices they add."""

    lines: Sequence[tuple[int, DeviceAdded]]
    ids: set[str]


@dataclass
class _Imported:
    """What an import's batches came to: events stored, lines refused or changing nothing."""

    appended: list[Appended] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    unchanged: int = 0


_ID_ONLY = msgspec.json.Decoder(dict[str, Any])
_SPEC_DECODER = msgspec.json.Decoder(DeviceSpec)
_EVENT_ENCODER = msgspec.json.Encoder()


class _ImportView:
    """The registry as it stands plus the devices accepted earlier in the same import."""

    def __init__(self, registry: Registry, pending: dict[str, Device]) -> None:
        self.registry = registry
        self.pending = pending

    def site(self, site_id: str) -> Site:
        return self.registry.sites.get(site_id).state

    def device(self, device_id: str) -> Device:
        pending = self.pending.get(device_id)
        return pending if pending is not None else self.registry.devices.get(device_id).state

    def active_devices(self, site_id: str) -> int:
        return self.registry.active_devices(site_id)


class Registry:
    """The registry service's state and handlers."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.sites: AggregateStore[Site] = AggregateStore(log, "site", domain.initial_site,
                                                          domain.evolve_site)
        self.devices: AggregateStore[Device] = AggregateStore(log, "device", domain.initial_device,
                                                              domain.evolve_device)
        self.followed_through = 0  # every site and device event through this sequence is in

    # --- View ------------------------------------------------------------------------------------

    def site(self, site_id: str) -> Site:
        """The site's current state."""
        return self.sites.get(site_id).state

    def device(self, device_id: str) -> Device:
        """The device's current state."""
        return self.devices.get(device_id).state

    def active_devices(self, site_id: str) -> int:
        """Active devices at a site (a scan: only retiring a site and listings ask)."""
        return sum(1 for slot in self.devices.slots.values()
                   if slot.state.site_id == site_id and slot.state.status == "active")

    # --- wiring ----------------------------------------------------------------------------------

    async def rebuild(self, from_seq: int = 1, to_seq: int | None = None) -> int:
        """Replay site and device events from `from_seq` through `to_seq` (the log's end when
        None), in log order."""
        count = 0
        async for recorded in self.log.replay(from_seq, to_seq, subjects=FAMILIES):
            aggregate, _ = parse_event_subject(recorded.subject)
            (self.devices if aggregate == "device" else self.sites).apply(recorded)
            count += 1
        return count

    async def follow(self, checkpoints: Checkpoints[RegistryImage] | None = None) -> None:
        """Forever: fold in other instances' writes (DESIGN §13) as the log stores them, and
        take checkpoints at the sequence followed."""

        def followed(seq: int) -> None:
            self.followed_through = seq

        peers = follow_peers(self.log, [self.sites, self.devices], self.followed_through + 1, after=followed)
        if checkpoints is None:
            await peers
            return
        await asyncio.gather(peers, checkpoints.run(lambda: self.followed_through, self.image))

    def image(self) -> RegistryImage:
        """Sites and devices, for a checkpoint."""
        return RegistryImage(self.sites.image(), self.devices.image())

    def restore(self, image: RegistryImage) -> None:
        """Take sites and devices from a checkpoint."""
        self.sites.restore(image.sites)
        self.devices.restore(image.devices)

    def register(self, service: CommandService) -> None:
        """Route every registry command to its handler."""
        service.route("add_site", AddSite, self.on_site_command)
        service.route("update_site", UpdateSite, self.on_site_command)
        service.route("retire_site", RetireSite, self.on_site_command)
        service.route("add_device", AddDevice, self.on_device_command)
        service.route("update_device", UpdateDevice, self.on_device_command)
        service.route("relabel_device", RelabelDevice, self.on_device_command)
        service.route("move_device", MoveDevice, self.on_device_command)
        service.route("retire_device", RetireDevice, self.on_device_command)
        service.route("import_devices", ImportDevices, self.import_devices)
        service.route("get_site", GetSite, self.get_site)
        service.route("list_sites", ListSites, self.list_sites)
        service.route("get_device", GetDevice, self.get_device)
        service.route("list_devices", ListDevices, self.list_devices)

    # --- commands --------------------------------------------------------------------------------

    async def on_site_command(self, cmd: AddSite | UpdateSite | RetireSite, ctx: Context) -> Outcome:
        """add_site, update_site, retire_site."""
        check_id(cmd.site_id, "site_id")
        appended = await self.sites.execute(
            cmd.site_id, lambda state: domain.decide_site(state, cmd, self),
            command_id=cmd.command_id, actor=cmd.actor, now=ctx.now)
        return Outcome(appended, self.site(cmd.site_id))

    async def on_device_command(
        self, cmd: AddDevice | UpdateDevice | RelabelDevice | MoveDevice | RetireDevice, ctx: Context
    ) -> Outcome:
        """add_device, update_device, relabel_device, move_device, retire_device."""
        check_id(cmd.device_id, "device_id")

        async def execute() -> list[Appended]:
            return await self.devices.execute(
                cmd.device_id, lambda state: domain.decide_device(state, cmd, self),
                command_id=cmd.command_id, actor=cmd.actor, now=ctx.now)

        try:
            appended = await execute()
        except NotFound as exc:
            # With two or more instances the site may have been added by another one a moment
            # ago, before this one's follower saw it: read the site from the log, decide again.
            site_id = getattr(cmd, "site_id", None)
            if exc.field != "site_id" or not site_id:
                raise
            await self.sites.reload(site_id)
            appended = await execute()
        return Outcome(appended, self.device(cmd.device_id))

    async def import_devices(self, cmd: ImportDevices, ctx: Context) -> Outcome:
        """Add many devices: every line is decided on its own against the registry plus the lines
        before it; accepted lines are appended in atomic batches of up to 1,000 (each device
        appended only if it is still new); refused lines are reported and change nothing."""
        if len(cmd.devices) > IMPORT_MAX_LINES:
            raise Invalid(f"{len(cmd.devices)} devices in one command; send at most {IMPORT_MAX_LINES}",
                          field="devices")
        pending: dict[str, Device] = {}
        view = _ImportView(self, pending)
        accepted: list[tuple[int, DeviceAdded]] = []
        refused: list[Refusal] = []
        unchanged = 0
        lines: list[tuple[int, DeviceSpec]] = []
        for index, raw in enumerate(cmd.devices):
            try:
                lines.append((index, _decode_spec(raw)))
            except FleetError as exc:
                refused.append(_refusal(index, _device_id_of(raw), exc))
        await self._read_unknown_sites({spec.site_id for _, spec in lines})
        for index, spec in lines:
            current = view.device(spec.device_id)
            try:
                events = domain.add_device(current, spec, view)
            except FleetError as exc:
                refused.append(_refusal(index, spec.device_id, exc))
                continue
            if not events:
                unchanged += 1
                continue
            added = events[0]
            assert isinstance(added, DeviceAdded)
            pending[spec.device_id] = domain.evolve_device(current, added)
            accepted.append((index, added))

        appended, late_refused, late_unchanged = await self._append_in_order(accepted, cmd, ctx)
        refused.extend(late_refused)
        unchanged += late_unchanged
        refused.sort(key=lambda r: r.index)
        report = ImportReport(added=len(appended), unchanged=unchanged, refused=refused)
        log.info("import: %d added, %d unchanged, %d refused", report.added, report.unchanged,
                 len(report.refused))
        return Outcome(appended, report)

    async def _read_unknown_sites(self, site_ids: set[str]) -> None:
        """With two or more instances a site may have been added by another one a moment ago,
        before this one's follower saw it: read the sites named that this one does not know
        from the log before deciding (a name that is not an id is left to the decision)."""
        unknown = sorted(s for s in site_ids - self.sites.slots.keys() if ID_RE.match(s))
        for start in range(0, len(unknown), 100):
            await asyncio.gather(*(self.sites.reload(site_id) for site_id in unknown[start:start + 100]))

    async def _append_in_order(self, accepted: Sequence[tuple[int, DeviceAdded]], cmd: Command,
                               ctx: Context) -> tuple[list[Appended], list[Refusal], int]:
        """Append accepted lines in atomic batches of up to 1,000, in order, BATCHES_IN_FLIGHT
        batches at the server at once, except that a batch naming a parent added by a batch still
        in flight waits for it, so a parent is always stored before its children. A batch refused
        (someone wrote one of its devices meanwhile) is decided again line by line."""
        done = _Imported()

        def landed(chunk: _Chunk, where: list[Appended]) -> None:
            self._fold_new_devices(chunk.lines, where)
            done.appended.extend(where)

        async def one_by_one(chunk: _Chunk, _: Conflict) -> None:
            landed_late, refusals, same = await self._add_one_by_one(chunk.lines, cmd, ctx)
            done.appended.extend(landed_late)
            done.refused.extend(refusals)
            done.unchanged += same

        at = format_time(ctx.now)  # once for the whole import
        async with Pipeline[_Chunk](self.log, window=BATCHES_IN_FLIGHT, landed=landed, refused=one_by_one) as pipe:
            for start in range(0, len(accepted), MAX_BATCH):
                lines = accepted[start:start + MAX_BATCH]
                writes = []  # every accepted line adds a device that has no event yet: expected sequence 0
                for n, (_, event) in enumerate(lines, 1):
                    envelope = seal(event, actor=cmd.actor, at=at, causation_id=cmd.command_id,
                                    correlation_id=cmd.command_id)
                    writes.append(Write(event_subject("device", event.device_id), [envelope], 0))
                    if n % 200 == 0:
                        await asyncio.sleep(0)  # the batch in flight gets its acknowledgement handled
                parents = {event.parent_id for _, event in lines if event.parent_id is not None}

                def adds_a_parent(flying: _Chunk, parents: set[str] = parents) -> bool:
                    return not parents.isdisjoint(flying.ids)

                await pipe.send(writes, _Chunk(lines, {event.device_id for _, event in lines}), after=adds_a_parent)
        return done.appended, done.refused, done.unchanged

    def _fold_new_devices(self, chunk: Sequence[tuple[int, DeviceAdded]], where: list[Appended]) -> None:
        """Each of these devices is new and this batch is its first event: fold it straight in
        (what AggregateStore.apply would do, without re-parsing subjects per device)."""
        slots = self.devices.slots
        for (_, event), at in zip(chunk, where, strict=True):
            slots[event.device_id] = Slot(domain.evolve_device(domain.initial_device(event.device_id), event),
                                          at.seq)
        if where:
            self.devices.applied_through = max(self.devices.applied_through, where[-1].seq)

    async def _add_one_by_one(self, chunk: Sequence[tuple[int, DeviceAdded]], cmd: Command,
                              ctx: Context) -> tuple[list[Appended], list[Refusal], int]:
        appended: list[Appended] = []
        refused: list[Refusal] = []
        unchanged = 0
        for index, event in chunk:
            spec = DeviceSpec(device_id=event.device_id, site_id=event.site_id, kind=event.kind,
                              parent_id=event.parent_id, labels=event.labels, metadata=event.metadata)

            def decide(state: Device, spec: DeviceSpec = spec) -> list[Event]:
                return domain.add_device(state, spec, self)

            try:
                landed = await self.devices.execute(
                    spec.device_id, decide,
                    command_id=f"{cmd.command_id}.{index}", actor=cmd.actor, now=ctx.now,
                    correlation_id=cmd.command_id)
            except FleetError as exc:
                refused.append(_refusal(index, spec.device_id, exc))
                continue
            if landed:
                appended.extend(landed)
            else:
                unchanged += 1
        return appended, refused, unchanged

    # --- queries ---------------------------------------------------------------------------------

    async def get_site(self, cmd: GetSite, ctx: Context) -> Outcome:
        """One site, with its active device count."""
        check_id(cmd.site_id, "site_id")
        site = self.site(cmd.site_id)
        if site.status == "absent":
            raise NotFound(f"site {cmd.site_id} does not exist", field="site_id")
        return Outcome(result=self._summary(site, self.active_devices(site.site_id)))

    async def list_sites(self, cmd: ListSites, ctx: Context) -> Outcome:
        """Every site ordered by id."""
        counts: dict[str, int] = {}
        for slot in self.devices.slots.values():
            if slot.state.status == "active":
                counts[slot.state.site_id] = counts.get(slot.state.site_id, 0) + 1
        sites = [self._summary(slot.state, counts.get(site_id, 0))
                 for site_id, slot in sorted(self.sites.slots.items())
                 if slot.state.status == "active" or cmd.include_retired]
        return Outcome(result=SiteList(sites=sites))

    async def get_device(self, cmd: GetDevice, ctx: Context) -> Outcome:
        """One device."""
        check_id(cmd.device_id, "device_id")
        device = self.device(cmd.device_id)
        if device.status == "absent":
            raise NotFound(f"device {cmd.device_id} does not exist", field="device_id")
        return Outcome(result=device)

    async def list_devices(self, cmd: ListDevices, ctx: Context) -> Outcome:
        """Devices matching a site and a label selector, a page at a time."""
        if not 1 <= cmd.limit <= LIST_LIMIT_MAX:
            raise Invalid(f"limit must be between 1 and {LIST_LIMIT_MAX}", field="limit")
        if cmd.site_id is not None:
            check_id(cmd.site_id, "site_id")
        selector: Selector = parse(cmd.selector)
        matched = sorted(
            device_id for device_id, slot in self.devices.slots.items()
            if (cmd.include_retired or slot.state.status == "active")
            and (cmd.site_id is None or slot.state.site_id == cmd.site_id)
            and selector.matches(slot.state.labels, slot.state.site_id, slot.state.kind)
        )
        start = 0
        if cmd.after is not None:
            start = bisect.bisect_right(matched, cmd.after)
        page: list[Device] = []
        size = 0
        for device_id in matched[start:start + cmd.limit]:
            device = self.device(device_id)
            size += len(_EVENT_ENCODER.encode(device))
            if page and size > PAGE_MAX_BYTES:  # a reply must fit in one NATS message
                break
            page.append(device)
        more = start + len(page) < len(matched)
        return Outcome(result=DevicePage(devices=page, total=len(matched),
                                         next=page[-1].device_id if more and page else None))

    @staticmethod
    def _summary(site: Site, active: int) -> SiteSummary:
        return SiteSummary(site_id=site.site_id, status=site.status, name=site.name, labels=site.labels,
                           metadata=site.metadata, retired_reason=site.retired_reason, active_devices=active,
                           windows=site.windows)


def _refusal(index: int, device_id: str | None, exc: FleetError) -> Refusal:
    """A refusal of bounded size, whatever the line held: an import's reply must fit in one
    NATS message (IMPORT_MAX_LINES refusals of at most ~400 bytes each)."""
    message = exc.message if len(exc.message) <= REFUSAL_TEXT_MAX else exc.message[:REFUSAL_TEXT_MAX - 1] + "…"
    field = exc.field if exc.field is None or len(exc.field) <= 64 else exc.field[:63] + "…"
    shown = device_id if device_id is None or len(device_id) <= 64 else device_id[:63] + "…"
    return Refusal(index, shown, exc.code, field, message)


def _decode_spec(raw: msgspec.Raw) -> DeviceSpec:
    try:
        return _SPEC_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc), field=decode_error_field(str(exc))) from None
    except msgspec.DecodeError as exc:  # pragma: no cover - the command body parsed as JSON
        raise Invalid(f"not JSON: {exc}", field="device") from None


def _device_id_of(raw: msgspec.Raw) -> str | None:
    try:
        value = _ID_ONLY.decode(raw).get("device_id")
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return value if isinstance(value, str) else None


async def start(nc: NATS, eventlog: EventLog, checkpoints: Checkpoints[RegistryImage] | None = None,
                ) -> tuple[Registry, CommandService]:
    """Rebuild the registry (from its newest checkpoint, if any, and the log after it) and
    start answering its commands."""
    registry = Registry(eventlog)
    last = await eventlog.last_stream_seq()
    from_seq = await checkpoints.resume(registry.restore) if checkpoints else 1
    count = await registry.rebuild(from_seq, last)
    registry.followed_through = last
    service = CommandService(nc, SERVICE)
    registry.register(service)
    await service.start()
    log.info("registry ready: %d events replayed after sequence %d, %d sites, %d devices", count,
             from_seq - 1, len(registry.sites.slots), len(registry.devices.slots))
    return registry, service
