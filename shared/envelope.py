"""The event envelope of DESIGN §3 and the base type of every event.

An event is a frozen msgspec Struct named in the past tense. Each event type names the aggregate
family it belongs to and the field that holds the aggregate's id; defining the class registers it
by name, so one decoder per type turns an envelope's `data` back into the typed event.

Schema evolution: add fields only with defaults; never change a type; a new meaning is a new event
type; a bumped `schema_version` comes with an upcaster from the previous version registered here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

import msgspec

from shared.errors import Invalid
from shared.ids import new_event_id
from shared.subjects import event_subject
from shared.times import format_time, parse_time


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every event; subclasses set `aggregate` and `id_field` as class variables."""

    aggregate: ClassVar[str]
    id_field: ClassVar[str]
    schema_version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "aggregate" in cls.__dict__:  # a concrete event type, not an intermediate base
            register(cls)

    @property
    def aggregate_id(self) -> str:
        """The id of the aggregate instance this event belongs to."""
        value = getattr(self, self.id_field)
        assert isinstance(value, str)
        return value

    @property
    def subject(self) -> str:
        """The event-log subject of the aggregate instance."""
        return event_subject(self.aggregate, self.aggregate_id)


class Envelope(msgspec.Struct, frozen=True):
    """The body of every message in FLEET_EVENTS."""

    type: str
    v: int
    id: str
    aggregate: str
    aggregate_id: str
    at: str
    actor: str
    causation_id: str | None = None
    correlation_id: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"{}")

    @property
    def at_time(self) -> datetime:
        """`at` as an aware datetime."""
        return parse_time(self.at, "at")


EVENT_TYPES: dict[str, type[Event]] = {}
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {}
# (type name, version it upgrades from) -> function from that version's data to the next one's.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}

_ENCODER = msgspec.json.Encoder()
_ENVELOPE_DECODER = msgspec.json.Decoder(Envelope)


def register(cls: type[Event]) -> None:
    """Make an event type decodable by its name; names are unique across all families."""
    name = cls.__name__
    existing = EVENT_TYPES.get(name)
    if existing is not None and existing is not cls:
        raise TypeError(f"event type name {name!r} is already taken by {existing.__module__}")
    EVENT_TYPES[name] = cls
    _DECODERS.pop(name, None)  # built on first use: the class is not complete while registering


def seal(
    event: Event,
    *,
    actor: str,
    at: datetime | str,
    causation_id: str | None = None,
    correlation_id: str | None = None,
    event_id: str | None = None,
) -> Envelope:
    """Wrap an event in its envelope, ready to append."""
    return Envelope(
        type=type(event).__name__,
        v=event.schema_version,
        id=event_id or new_event_id(),
        aggregate=event.aggregate,
        aggregate_id=event.aggregate_id,
        at=at if isinstance(at, str) else format_time(at),  # a str: formatted once for many events
        actor=actor,
        causation_id=causation_id,
        correlation_id=correlation_id,
        data=msgspec.Raw(_ENCODER.encode(event)),
    )


def encode_envelope(envelope: Envelope) -> bytes:
    """JSON bytes of an envelope."""
    return _ENCODER.encode(envelope)


def decode_envelope(body: bytes) -> Envelope:
    """Parse an envelope; a body that is not one raises Invalid."""
    try:
        return _ENVELOPE_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise Invalid(f"not an event envelope: {exc}", field="envelope") from None
    except msgspec.DecodeError as exc:
        raise Invalid(f"not JSON: {exc}", field="envelope") from None


def decode_event(envelope: Envelope) -> Event | None:
    """The typed event inside an envelope, or None when the type is unknown to this build."""
    cls = EVENT_TYPES.get(envelope.type)
    if cls is None:
        return None
    decoder = _DECODERS.get(envelope.type)
    if decoder is None:
        decoder = _DECODERS[envelope.type] = msgspec.json.Decoder(cls)
    if envelope.v == cls.schema_version:
        event: Event = decoder.decode(envelope.data)
        return event
    return _upcast(cls, envelope)


def _upcast(cls: type[Event], envelope: Envelope) -> Event:
    if envelope.v > cls.schema_version:
        raise Invalid(
            f"{envelope.type} v{envelope.v} is newer than this build understands (v{cls.schema_version})",
            field="v",
        )
    data: dict[str, Any] = msgspec.json.decode(envelope.data)
    for version in range(envelope.v, cls.schema_version):
        upcaster = UPCASTERS.get((envelope.type, version))
        if upcaster is None:
            raise Invalid(f"no upcaster for {envelope.type} v{version}", field="v")
        data = upcaster(data)
    return msgspec.convert(data, cls)
