"""Every command Fleetplane serves: its service, its name (the last token of its subject
`fleet.cmd.<service>.<name>`), the Struct of its body and of its reply's `result`, and who may
send it. The services route these names to these types, the CLI and the HTTP API build these
types, and the published schemas (shared.contract.schema) are generated from this list."""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import msgspec

from shared.contract import authority, drift, registry, rollout, snapshot
from shared.wire import Command, ErrorBody, EventRef


class CommandSpec(NamedTuple):
    """One command of the contract."""

    service: str
    name: str
    command: type[Command]
    result: Any  # the type of the reply's `result`
    changes: bool = True  # False: a query; it appends nothing

    @property
    def subject(self) -> str:
        """The NATS subject it is sent to."""
        return f"fleet.cmd.{self.service}.{self.name}"

    @property
    def key(self) -> str:
        """`<service>.<name>`: the name of its schemas and of its endpoint metadata."""
        return f"{self.service}.{self.name}"

    @property
    def http_path(self) -> str:
        """Where the HTTP API takes it (POST, the same body)."""
        return f"/v1/commands/{self.service}/{self.name}"

    @property
    def summary(self) -> str:
        """The first line of the command type's docstring."""
        return inspect.cleandoc(self.command.__doc__ or "").split("\n\n")[0].replace("\n", " ")


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("registry", "add_site", registry.AddSite, registry.Site),
    CommandSpec("registry", "update_site", registry.UpdateSite, registry.Site),
    CommandSpec("registry", "retire_site", registry.RetireSite, registry.Site),
    CommandSpec("registry", "add_device", registry.AddDevice, registry.Device),
    CommandSpec("registry", "update_device", registry.UpdateDevice, registry.Device),
    CommandSpec("registry", "relabel_device", registry.RelabelDevice, registry.Device),
    CommandSpec("registry", "move_device", registry.MoveDevice, registry.Device),
    CommandSpec("registry", "retire_device", registry.RetireDevice, registry.Device),
    CommandSpec("registry", "import_devices", registry.ImportDevices, registry.ImportReport),
    CommandSpec("registry", "get_site", registry.GetSite, registry.SiteSummary, changes=False),
    CommandSpec("registry", "list_sites", registry.ListSites, registry.SiteList, changes=False),
    CommandSpec("registry", "get_device", registry.GetDevice, registry.Device, changes=False),
    CommandSpec("registry", "list_devices", registry.ListDevices, registry.DevicePage, changes=False),
    CommandSpec("snapshot", "create", snapshot.CreateSnapshot, snapshot.CreateResult),
    CommandSpec("snapshot", "retire", snapshot.RetireSnapshot, snapshot.SnapshotSummary),
    CommandSpec("snapshot", "mark_good", snapshot.MarkGood, snapshot.SnapshotSummary),
    CommandSpec("snapshot", "get", snapshot.GetSnapshot, snapshot.Snapshot, changes=False),
    CommandSpec("snapshot", "list", snapshot.ListSnapshots, snapshot.SnapshotList, changes=False),
    CommandSpec("snapshot", "diff", snapshot.DiffSnapshots, snapshot.DiffResult, changes=False),
    CommandSpec("rollout", "start", rollout.StartRollout, rollout.StartResult),
    CommandSpec("rollout", "pause", rollout.ActOnRollout, rollout.RolloutStatus),
    CommandSpec("rollout", "resume", rollout.ActOnRollout, rollout.RolloutStatus),
    CommandSpec("rollout", "abort", rollout.ActOnRollout, rollout.RolloutStatus),
    CommandSpec("rollout", "promote", rollout.ActOnRollout, rollout.RolloutStatus),
    CommandSpec("rollout", "ignore_windows", rollout.ActOnRollout, rollout.RolloutStatus),
    CommandSpec("rollout", "rollback", rollout.RollbackRollout, rollout.RollbackResult),
    CommandSpec("rollout", "get", rollout.GetRollout, rollout.RolloutStatus, changes=False),
    CommandSpec("rollout", "list", rollout.ListRollouts, rollout.RolloutList, changes=False),
    CommandSpec("rollout", "what_if", rollout.WhatIfGates, rollout.WhatIfResult, changes=False),
    CommandSpec("drift", "reconcile", drift.Reconcile, drift.DriftStanding),
    CommandSpec("drift", "acknowledge", drift.Acknowledge, drift.DriftStanding),
    CommandSpec("authority", "revoke_device", authority.RevokeDevice, authority.Revoked),
)
BY_KEY = {spec.key: spec for spec in COMMANDS}
SERVICES = tuple(dict.fromkeys(spec.service for spec in COMMANDS))


def spec_of(service: str, name: str) -> CommandSpec:
    """The command `name` of `service` (KeyError when there is none)."""
    return BY_KEY[f"{service}.{name}"]


def reply_type(spec: CommandSpec) -> type[msgspec.Struct]:
    """The reply of one command, with its typed `result`: `{"ok": true, "events", "result"}` or
    `{"ok": false, "error"}`."""
    name = "".join(part.title() for part in f"{spec.service}_{spec.name}".split("_")) + "Reply"
    return _REPLIES.setdefault(name, msgspec.defstruct(
        name, [("ok", bool), ("events", list[EventRef], []), ("result", spec.result | None, None),
               ("error", ErrorBody | None, None)],
        frozen=True, omit_defaults=True, kw_only=True, module=__name__))


_REPLIES: dict[str, type[msgspec.Struct]] = {}
