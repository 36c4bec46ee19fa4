"""The machine-readable contract, generated from the msgspec types: a JSON Schema (2020-12) per
command, per reply, per event type (envelope and data), for the heartbeat, the desired-state
value and the credential renewal; and one AsyncAPI 3 document naming every NATS channel.
`fleet contract export DIR` writes them; docs/contract/ holds the committed copy, which a test
keeps equal to what this module generates. The HTTP API's OpenAPI document takes its command
bodies and replies from `components` here too, so both say the same."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
from fleet_agent.contract import DesiredState, Heartbeat, Renewed

import shared.events  # noqa: F401  # registers every event type
from shared.contract.catalog import COMMANDS, CommandSpec, reply_type
from shared.contract.registry import DeviceSpec
from shared.envelope import EVENT_TYPES, Envelope, Event

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://fleetplane.invalid/contract/"  # names the files; nothing is fetched from it
DEFS = "#/$defs/{name}"
ENVELOPE_FIELDS = ("type", "v", "id", "aggregate", "aggregate_id", "at", "actor", "causation_id",
                   "correlation_id", "data")


def event_types() -> list[type[Event]]:
    """Every event type the services can emit, by name (those of shared.events: a test's own
    event types register too, and are no part of the contract)."""
    return [EVENT_TYPES[name] for name in sorted(EVENT_TYPES)
            if EVENT_TYPES[name].__module__.startswith("shared.events.")]


def components() -> dict[str, Any]:
    """The JSON Schema of every named type of the contract, by name, referring to each other as
    `#/$defs/<name>`."""
    types: list[Any] = [spec.command for spec in COMMANDS]
    types += [reply_type(spec) for spec in COMMANDS]
    # DeviceSpec: each line of import_devices (decoded line by line, so named by reference)
    types += [*event_types(), _envelope(), Heartbeat, DesiredState, Renewed, DeviceSpec]
    _, found = msgspec.json.schema_components(types, ref_template=DEFS)
    for name, schema in found.items():
        _without_actor(schema, name)
    return dict(sorted(found.items()))


def _envelope() -> Any:
    """The Envelope Struct's fields but `data` (held as raw JSON; each event file names its type)."""
    fields = [(f.name, f.type, f.default if f.default is not msgspec.NODEFAULT else msgspec.NODEFAULT)
              for f in msgspec.structs.fields(Envelope) if f.name != "data"]
    return msgspec.defstruct("Envelope", fields, module=__name__, kw_only=True)


_COMMAND_NAMES = {spec.command.__name__ for spec in COMMANDS}


def _without_actor(schema: dict[str, Any], name: str) -> None:
    """A command's `actor` is not the client's to say: the service records who authenticated, so
    the published schema leaves it out."""
    if name in _COMMAND_NAMES:
        schema.get("properties", {}).pop("actor", None)


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            yield ref.removeprefix("#/$defs/")
        for inner in value.values():
            yield from _refs(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _refs(inner)


def _closure(roots: Iterable[Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The definitions `roots` need, transitively."""
    needed: dict[str, Any] = {}
    pending = [name for root in roots for name in _refs(root)]
    while pending:
        name = pending.pop()
        if name not in needed:
            needed[name] = defs[name]
            pending.extend(_refs(defs[name]))
    return dict(sorted(needed.items()))


def _document(path: str, title: str, description: str, root: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"$schema": DIALECT, "$id": BASE_ID + path, "title": title,
                           "description": description, **root}
    needed = _closure([root], defs)
    if needed:
        doc["$defs"] = needed
    return doc


def _named(name: str) -> dict[str, Any]:
    return {"$ref": DEFS.format(name=name)}


def command_schema(spec: CommandSpec, defs: dict[str, Any]) -> dict[str, Any]:
    """The body of one command."""
    return _document(f"commands/{spec.key}.json", spec.key,
                     f"The body of a request on `{spec.subject}`. {spec.summary}",
                     _named(spec.command.__name__), defs)


def reply_schema(spec: CommandSpec, defs: dict[str, Any]) -> dict[str, Any]:
    """The reply to one command."""
    return _document(f"replies/{spec.key}.json", f"{spec.key} reply",
                     f"The reply to `{spec.subject}`: `ok` true with the stored events and the "
                     f"result, or `ok` false with the error.", _named(reply_type(spec).__name__), defs)


def event_schema(cls: type[Event], defs: dict[str, Any]) -> dict[str, Any]:
    """An event of one type as stored in FLEET_EVENTS: the envelope with its data."""
    envelope = defs["Envelope"]
    properties = dict(envelope["properties"])
    properties["type"] = {"const": cls.__name__}
    properties["v"] = {"const": cls.schema_version}
    properties["aggregate"] = {"const": cls.aggregate}
    properties["data"] = _named(cls.__name__)
    root = {"type": "object", "properties": properties, "required": envelope["required"],
            "additionalProperties": True}
    doc = inspect.cleandoc(cls.__doc__ or "").replace("\n", " ")
    return _document(f"events/{cls.__name__}.json", cls.__name__,
                     f"On `fleet.evt.{cls.aggregate}.<{cls.id_field}>`. {doc}", root, defs)


def device_schemas(defs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The heartbeat, the desired-state value and the renewal reply."""
    return {
        "heartbeat.json": _document("heartbeat.json", "Heartbeat", inspect.cleandoc(Heartbeat.__doc__ or "")
                                    + " Published on `fleet.hb.<site>.<device>` (core NATS).",
                                    _named("Heartbeat"), defs),
        "desired-state.json": _document("desired-state.json", "DesiredState",
                                        "The value of key `<device>` in the KV bucket `fleet_desired`, read "
                                        "with a direct get and followed on `$KV.fleet_desired.<device>`.",
                                        _named("DesiredState"), defs),
        "renewal-reply.json": _document("renewal-reply.json", "Renewed",
                                        "The reply to a request on `fleet.renew.<device>` (any body): a "
                                        "fresh user JWT, or why not.", _named("Renewed"), defs),
    }


def asyncapi(defs: dict[str, Any]) -> dict[str, Any]:
    """One AsyncAPI 3 document: every channel, its messages (payloads are the published JSON
    Schemas, referred to by file) and the operations on them."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    nats = {"nats": {"bindingVersion": "0.1.0"}}

    def payload(path: str) -> dict[str, Any]:
        return {"schemaFormat": "application/schema+json;version=draft-2020-12", "schema": {"$ref": path}}

    for spec in COMMANDS:
        key = f"{spec.service}_{spec.name}"
        messages[key] = {"name": spec.key, "title": spec.key, "summary": spec.summary,
                         "contentType": "application/json", "payload": payload(f"commands/{spec.key}.json")}
        messages[f"{key}_reply"] = {"name": f"{spec.key} reply", "contentType": "application/json",
                                    "payload": payload(f"replies/{spec.key}.json")}
        channels[key] = {"address": spec.subject, "messages": {key: {"$ref": f"#/components/messages/{key}"}},
                         "bindings": nats}
        channels[f"{key}_reply"] = {"address": None, "description": "The requester's inbox.",
                                    "messages": {f"{key}_reply": {"$ref": f"#/components/messages/{key}_reply"}}}
        operations[key] = {
            "action": "send", "channel": {"$ref": f"#/channels/{key}"}, "summary": spec.summary,
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
            "reply": {"channel": {"$ref": f"#/channels/{key}_reply"},
                      "messages": [{"$ref": f"#/channels/{key}_reply/messages/{key}_reply"}]},
            "bindings": nats,
        }
    families: dict[str, list[type[Event]]] = {}
    for cls in event_types():
        families.setdefault(cls.aggregate, []).append(cls)
        messages[cls.__name__] = {"name": cls.__name__, "contentType": "application/json",
                                  "headers": {"type": "object", "properties": {
                                      "Nats-Msg-Id": {"type": "string", "description": "the event id"},
                                      "Fleet-Event-Type": {"const": cls.__name__}}},
                                  "payload": payload(f"events/{cls.__name__}.json")}
    for family, types in sorted(families.items()):
        key = f"events_{family}"
        channels[key] = {
            "address": f"fleet.evt.{family}.{{id}}",
            "description": f"The {family} aggregates' events, in the JetStream stream FLEET_EVENTS "
                           f"(read with a consumer or a direct get; only the owning service appends).",
            "parameters": {"id": {"description": f"the {family}'s id"}},
            "messages": {cls.__name__: {"$ref": f"#/components/messages/{cls.__name__}"} for cls in types},
            "bindings": nats,
        }
        operations[f"follow_{family}"] = {"action": "receive", "channel": {"$ref": f"#/channels/{key}"},
                                          "summary": f"Read {family} events from the log."}
    messages["heartbeat"] = {"name": "Heartbeat", "contentType": "application/json",
                             "payload": payload("heartbeat.json")}
    messages["desired_state"] = {"name": "DesiredState", "contentType": "application/json",
                                 "payload": payload("desired-state.json")}
    messages["renewal_request"] = {"name": "renewal request", "contentType": "application/json",
                                   "payload": {"schemaFormat": "application/schema+json;version=draft-2020-12",
                                               "schema": {"description": "any body; the subject names the device"}}}
    messages["renewal_reply"] = {"name": "Renewed", "contentType": "application/json",
                                 "payload": payload("renewal-reply.json")}
    channels["heartbeat"] = {"address": "fleet.hb.{site}.{device}", "bindings": nats,
                             "description": "Core NATS (never stored); every interval (default 10 s).",
                             "parameters": {"site": {}, "device": {}},
                             "messages": {"heartbeat": {"$ref": "#/components/messages/heartbeat"}}}
    channels["desired_state"] = {"address": "$KV.fleet_desired.{device}", "bindings": nats,
                                 "description": "Puts to the device's key in the KV bucket fleet_desired; "
                                                "followed with a plain core subscription.",
                                 "parameters": {"device": {}},
                                 "messages": {"desired_state": {"$ref": "#/components/messages/desired_state"}}}
    channels["renewal"] = {"address": "fleet.renew.{device}", "bindings": nats,
                           "description": "A device asks for a fresh JWT before its own expires.",
                           "parameters": {"device": {}},
                           "messages": {"renewal_request": {"$ref": "#/components/messages/renewal_request"}}}
    channels["renewal_reply"] = {"address": None, "description": "The device's inbox (_INBOX.<device>.>).",
                                 "messages": {"renewal_reply": {"$ref": "#/components/messages/renewal_reply"}}}
    operations["publish_heartbeat"] = {"action": "send", "channel": {"$ref": "#/channels/heartbeat"},
                                       "summary": "A device reports what it runs and how it is."}
    operations["follow_desired_state"] = {"action": "receive", "channel": {"$ref": "#/channels/desired_state"},
                                          "summary": "A device follows what it should run."}
    operations["renew"] = {"action": "send", "channel": {"$ref": "#/channels/renewal"},
                           "summary": "A device renews its credentials.",
                           "reply": {"channel": {"$ref": "#/channels/renewal_reply"}}}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Fleetplane", "version": "1",
                 "description": "The NATS side of Fleetplane's contract; see docs/contract.md."},
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": "localhost:4222", "protocol": "nats",
                             "description": "Every connection authenticates (NATS JWT); see docs/contract.md."}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": dict(sorted(messages.items()))},
    }


def export() -> dict[str, Any]:
    """Every file of the machine-readable contract: relative path -> JSON value."""
    defs = components()
    files: dict[str, Any] = {}
    for spec in COMMANDS:
        files[f"commands/{spec.key}.json"] = command_schema(spec, defs)
        files[f"replies/{spec.key}.json"] = reply_schema(spec, defs)
    for cls in event_types():
        files[f"events/{cls.__name__}.json"] = event_schema(cls, defs)
    files.update(device_schemas(defs))
    files["asyncapi.json"] = asyncapi(defs)
    return dict(sorted(files.items()))


def render(value: Any) -> bytes:
    """A file's bytes: indented JSON with a final newline (stable, diff-friendly)."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n"
