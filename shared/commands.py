"""Commands over NATS request/reply (DESIGN §3), served with the NATS micro services API.

A service registers typed handlers; each command is its own endpoint of the NATS micro service,
on `fleet.cmd.<service>.<command>`, with the name of its published JSON Schema in the endpoint's
metadata, so `$SRV.INFO` (`nats micro info fleet-<service>`) lists every command; `$SRV.PING` and
`$SRV.STATS` work too. A command nobody serves gets the server's "no responders". The body is
decoded with the command's msgspec type; decoding errors name the field. Every command carries a
client-chosen `command_id`: a repeat of an id this process has answered (by the same identity,
within a bound in bytes) gets the same reply, and a repeat after a restart is recognised by the
aggregate store from the events' `causation_id` (see shared.aggregates), so no second event.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service
from opentelemetry import context as otel_context

from shared import metrics, telemetry
from shared.auth.actor import ON_BEHALF_OF, actor_of
from shared.bounds import check_no_control
from shared.contract.catalog import COMMANDS
from shared.errors import FleetError, Invalid, Unavailable, error_from_code
from shared.eventlog import Appended
from shared.ids import ID_RE, ID_RULE, check_id, new_command_id
from shared.subjects import command_subject
from shared.times import utcnow
from shared.wire import Command, ErrorBody, EventRef, Reply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a handler returns: the events it appended and a result for the caller."""

    appended: Sequence[Appended] = ()
    result: Any = None
    remember: bool = False  # keep the reply for repeats though nothing was appended (a side effect)


@dataclass(frozen=True)
class Context:
    """Per-request facts a handler may use: the time it was received and trace headers."""

    now: datetime
    headers: dict[str, str] = field(default_factory=dict)


C = TypeVar("C", bound=Command)
Handler = Callable[[C, Context], Awaitable[Outcome]]

_PUBLISHED = {(spec.service, spec.name): spec.command for spec in COMMANDS}
_ENCODER = msgspec.json.Encoder()
_REPLY_DECODER = msgspec.json.Decoder(Reply)
REMEMBER_BYTES = 8 * 1024 * 1024  # replies kept for repeats of a command id, per service
SEND_ATTEMPTS = 2  # a command unanswered in time is sent once more, with the same id
_ID_PATTERN = f"regex '{ID_RE.pattern}'"
_FIELD_AT = re.compile(r"at `\$\.?([^`]*)`")
_FIELD_MISSING = re.compile(r"missing required field `([^`]*)`")
_FIELD_UNKNOWN = re.compile(r"unknown field `([^`]*)`")


def endpoint_metadata(service: str, command: str, command_type: Any) -> dict[str, str]:
    """What `$SRV.INFO` says of one command endpoint: the subject and the names of the JSON Schemas
    of its body and its reply, as published under docs/contract/ (shared.contract.schema). A
    partition of a service (`drift-3`) serves the published command of its type."""
    key = next((spec.key for spec in COMMANDS if spec.command is command_type and spec.name == command),
               f"{service}.{command}")
    return {"schema": key, "subject": command_subject(service, command),
            "request_type": getattr(command_type, "__name__", str(command_type)),
            "request_schema": f"commands/{key}.json", "reply_schema": f"replies/{key}.json"}


def decode_error_field(message: str) -> str | None:
    """The field a msgspec validation error is about, as a dotted path."""
    path = _FIELD_AT.search(message)
    prefix = path.group(1) if path else ""
    named = _FIELD_MISSING.search(message) or _FIELD_UNKNOWN.search(message)
    if named:
        return f"{prefix}.{named.group(1)}" if prefix else named.group(1)
    return prefix or None


def error_reply(exc: FleetError) -> Reply:
    """The reply for a refused command."""
    return Reply(ok=False, error=ErrorBody(code=exc.code, message=exc.message, field=exc.field))


@dataclass
class _Route(Generic[C]):
    decoder: msgspec.json.Decoder[C]
    handler: Handler[C]


class CommandService:
    """Serves `fleet.cmd.<name>.<command>` for one service."""

    def __init__(self, nc: NATS, name: str, *, version: str = "0.1.0",
                 remember_bytes: int = REMEMBER_BYTES) -> None:
        """`remember_bytes`: the most reply bytes kept for repeats of a command id (oldest go first)."""
        self.nc = nc
        self.name = name
        self.version = version
        self._routes: dict[str, _Route[Any]] = {}
        # (command, actor, command id) -> reply: a repeat by another identity is not a repeat
        self._replies: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._remember_bytes = remember_bytes
        self.cached_bytes = 0
        self._service: Service | None = None
        self.counts: dict[tuple[str, str], int] = {}

    def route(self, command: str, command_type: type[C], handler: Handler[C]) -> None:
        """Register the handler of one command (before `start`). A command of the published contract
        must decode into the catalog's type (shared.contract.catalog): one definition, never a second."""
        if self._service is not None:
            raise RuntimeError(f"route {self.name}.{command} before start: each command is an endpoint")
        published = _PUBLISHED.get((self.name.split("-", 1)[0], command))
        if published is not None and published is not command_type:
            raise TypeError(f"{self.name}.{command} takes {published.__name__} (shared.contract), "
                            f"not {command_type.__name__}")
        self._routes[command] = _Route(msgspec.json.Decoder(command_type), handler)

    @property
    def command_types(self) -> dict[str, Any]:
        """Each command name and the type its body decodes to."""
        return {name: route.decoder.type for name, route in self._routes.items()}

    async def start(self) -> None:
        """Join the micro services API and start answering."""
        self._service = await add_service(
            self.nc,
            name=f"fleet-{self.name}",
            version=self.version,
            description=f"Fleetplane {self.name} service",
            stats_handler=self._stats,
        )
        for command, route in self._routes.items():
            await self._service.add_endpoint(
                name=command,
                subject=command_subject(self.name, command),
                handler=self._on_request,
                queue_group=f"fleet-{self.name}",
                metadata=endpoint_metadata(self.name, command, route.decoder.type),
            )

    async def stop(self) -> None:
        """Stop answering (in-flight requests finish)."""
        if self._service is not None:
            await self._service.stop()
            self._service = None

    def _stats(self, endpoint: Any) -> dict[str, Any]:
        by_result = {result: n for (cmd, result), n in self.counts.items() if cmd == endpoint.name}
        if endpoint.name != min(self._routes, default=""):
            return {"by_result": by_result}
        # The process's metrics once per service instance, with its first endpoint.
        return {"by_result": by_result, "metrics": metrics.samples()}

    async def _on_request(self, request: Request) -> None:
        command = request.subject.rsplit(".", 1)[-1]
        headers = dict(request.headers or {})
        token = otel_context.attach(telemetry.extract_context(headers))
        try:
            with telemetry.tracer.start_as_current_span(f"command {self.name}.{command}"):
                body = await self._dispatch(command, request.data, headers)
        finally:
            otel_context.detach(token)
        await request.respond(body)

    async def _dispatch(self, command: str, data: bytes, headers: dict[str, str]) -> bytes:
        started = time.perf_counter()
        route = self._routes.get(command)
        key: tuple[str, str, str] | None = None
        remember = False
        try:
            if route is None:
                known = ", ".join(sorted(self._routes))
                raise Invalid(f"unknown command {command!r} for {self.name}; known: {known}",
                              field="command")
            # The actor is who the server says sent it (shared.auth.actor), never the body's.
            cmd = msgspec.structs.replace(_decode(route.decoder, data), actor=actor_of(headers))
            check_id(cmd.command_id, "command_id")  # a subject-safe token, like every id
            key = (command, cmd.actor, cmd.command_id)
            cached = self._replies.get(key)
            if cached is not None:
                self._count(command, "duplicate", started)
                return cached
            outcome = await route.handler(cmd, Context(now=utcnow(), headers=headers))
            remember = outcome.remember
            reply = Reply(
                ok=True,
                events=[EventRef(a.subject, a.seq) for a in outcome.appended],
                result=outcome.result,
            )
            result = "ok"
        except FleetError as exc:
            reply, result = error_reply(exc), exc.code
        except Exception as exc:  # a bug: answer, log with traceback, keep serving
            log.exception("command %s.%s failed", self.name, command)
            reply = Reply(ok=False, error=ErrorBody("internal", f"internal error: {exc!r}"))
            result = "internal"
        body = _ENCODER.encode(reply)
        # Only a reply that reports appended events (or another side effect) is kept: a repeat
        # must not do it again. A query (or a refusal, a no-op) is answered afresh: remembering
        # them let one operator fill a service's memory with fresh command ids (100 x 48 KB list
        # replies a second).
        if key is not None and (reply.events or remember):
            self._remember_reply(key, body)
        self._count(command if route is not None else "unknown", result, started)
        log.debug("%s.%s -> %s in %.1f ms", self.name, command, result,
                  (time.perf_counter() - started) * 1000)
        return body

    def _remember_reply(self, key: tuple[str, str, str], body: bytes) -> None:
        if len(body) > self._remember_bytes or key in self._replies:
            return
        self._replies[key] = body
        self.cached_bytes += len(body)
        while self.cached_bytes > self._remember_bytes:
            _, dropped = self._replies.popitem(last=False)
            self.cached_bytes -= len(dropped)

    def _count(self, command: str, result: str, started: float) -> None:
        self.counts[(command, result)] = self.counts.get((command, result), 0) + 1
        metrics.COMMANDS.labels(self.name, command, result).inc()
        metrics.COMMAND_SECONDS.labels(self.name, command).observe(time.perf_counter() - started)


def _decode(decoder: msgspec.json.Decoder[C], data: bytes) -> C:
    try:
        command = decoder.decode(data)
        check_no_control(data)
        return command
    except msgspec.ValidationError as exc:
        message = str(exc)
        if _ID_PATTERN in message:  # the id rule, said in words
            message = message.replace(f"Expected `str` matching regex '{ID_RE.pattern}'", ID_RULE)
        raise Invalid(message, field=decode_error_field(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise Invalid(f"body is not valid JSON: {exc}", field="body") from None
    except RecursionError:
        raise Invalid("body nests too deeply", field="body") from None


class CommandClient:
    """Sends commands and turns error replies into typed exceptions."""

    def __init__(self, nc: NATS, *, actor: str | None = None, timeout: float = 10.0) -> None:
        """`actor`: the principal a forwarder (the HTTP API, drift's hand-over, admin) acts for,
        sent as `Fleet-On-Behalf-Of`; services honour it only from those identities, and
        otherwise record who authenticated (shared.auth.actor)."""
        self.nc = nc
        self.actor = actor
        self.timeout = timeout

    async def request(self, service: str, command: str, body: Command | Mapping[str, Any],
                      timeout: float | None = None) -> Reply:
        """Send one command (its Struct from `shared.contract`, or the same as a mapping, whose
        `command_id` is filled in when absent). Returns the reply as is (ok or not); raises
        Unavailable when no service answers.

        A command whose reply does not come in time is sent once more with the same command id:
        a service that applied it answers with its original events (commands are idempotent by
        id), and a reply can be lost on its way (nats-server drops the replies in flight when
        the services' account is updated, e.g. by a revocation: docs/decisions.md)."""
        payload = {"command_id": new_command_id(), **_fields(body)}
        subject = command_subject(service, command)
        data = _ENCODER.encode(payload)
        with telemetry.tracer.start_as_current_span(f"send {service}.{command}"):
            headers = telemetry.inject_headers()  # inside the span: the service continues it
            if self.actor:
                headers[ON_BEHALF_OF] = self.actor
            for attempt in range(SEND_ATTEMPTS):
                try:
                    msg = await self.nc.request(subject, data, timeout or self.timeout, headers=headers or None)
                    break
                except nats.errors.NoRespondersError:
                    raise Unavailable(f"no {service} service is answering on {subject} (it is down, or it has "
                                      f"no command {command!r}: `$SRV.INFO` lists them)") from None
                except nats.errors.TimeoutError:
                    if attempt + 1 == SEND_ATTEMPTS:
                        raise Unavailable(f"the {service} service did not answer {command} in time") from None
                    log.warning("no answer to %s.%s (command %s) in time; sending it once more",
                                service, command, payload["command_id"])
        return _REPLY_DECODER.decode(msg.data)

    async def wait_ready(self, *services: str, timeout: float = 60.0) -> None:
        """Wait (bounded) until each named service answers `$SRV.PING`; raise Unavailable naming
        the ones that never did."""
        deadline = asyncio.get_running_loop().time() + timeout
        waiting = list(services)
        while waiting:
            try:
                await self.nc.request(f"$SRV.PING.fleet-{waiting[0]}", b"", timeout=0.5)
                waiting.pop(0)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                if asyncio.get_running_loop().time() > deadline:
                    raise Unavailable(f"no answer from the {', '.join(waiting)} service(s) "
                                      f"within {timeout:g} s") from None
                await asyncio.sleep(0.1)

    async def send(self, service: str, command: str, body: Command | Mapping[str, Any],
                   timeout: float | None = None) -> Reply:
        """Like `request`, but raise the typed error of a refused command."""
        reply = await self.request(service, command, body, timeout)
        if not reply.ok:
            assert reply.error is not None
            raise error_from_code(reply.error.code, reply.error.message, reply.error.field)
        return reply


def _fields(body: Command | Mapping[str, Any]) -> dict[str, Any]:
    """The body as sent: a Struct's fields (never `actor`: the service records who authenticated)."""
    if isinstance(body, Command):
        return {name: getattr(body, name) for name in body.__struct_fields__ if name != "actor"}
    return dict(body)


__all__ = ["Command", "CommandClient", "CommandService", "Context", "ErrorBody", "EventRef", "Outcome", "Reply",
           "decode_error_field", "error_reply"]
