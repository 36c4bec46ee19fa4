"""Commands over HTTP (DESIGN §7): every command of the contract (shared.contract.catalog) at
`POST /v1/commands/<service>/<command>`, with the same JSON body as on NATS; the API forwards it
to the owning service and returns its reply unchanged (`{"ok", "events", "result"}`), with the
HTTP status of its error code. The body is checked by the service itself, so a refusal names the
same `error.field` over HTTP as over NATS. The events' highest sequence can be passed back as
`min_seq` to read your own writes. Two short paths stay for rollouts: `POST /v1/rollouts` (start)
and `POST /v1/rollouts/{id}/{action}`.

The API sends under its own NATS identity, on behalf of the caller's authenticated principal
(`Fleet-On-Behalf-Of: operator:<token name>`, DESIGN §11); a body cannot name an actor.

The OpenAPI document describes each command's body and reply with the published JSON Schemas'
own definitions (shared.contract.schema), so the two never disagree."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from projections.api.auth import COMMAND, principal_of
from projections.api.queries import ReadModels
from shared.commands import CommandClient, ErrorBody, Reply
from shared.contract import schema
from shared.contract.catalog import COMMANDS, CommandSpec, reply_type, spec_of
from shared.errors import REFUSALS, status_of

ACTIONS = ("pause", "resume", "abort", "promote", "rollback", "ignore_windows")
BODY_MAX = 4 * 1024 * 1024  # an import of 2,500 devices fits; the NATS payload limit decides the rest
_OBJECT = msgspec.json.Decoder(dict[str, Any])


def _refused(code: str, message: str, field: str | None, status: int) -> Response[Reply]:
    return Response(Reply(ok=False, error=ErrorBody(code, message, field)), status_code=status)


async def _body(request: Request[Any, Any, Any]) -> dict[str, Any] | Response[Reply]:
    """The request's JSON object (empty when there is no body), or the refusal to send."""
    data = await request.body()
    if len(data) > BODY_MAX:
        return _refused("invalid", f"the body is over {BODY_MAX} bytes", "body", 413)
    if not data.strip():
        return {}
    try:
        return _OBJECT.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _refused("invalid", f"the body must be a JSON object: {exc}", "body", 400)


async def _forward(models: ReadModels, request: Request[Any, Any, Any], spec: CommandSpec,
                   body: dict[str, Any]) -> Response[Reply]:
    if "actor" in body:  # the services would ignore it; say so rather than seem to accept it
        return _refused("invalid", "a body cannot name the actor: it is the token's principal", "actor", 400)
    client = CommandClient(models.log.nc, actor=str(principal_of(request)))  # sent as Fleet-On-Behalf-Of
    reply = await client.request(spec.service, spec.name, body)
    status = 200 if reply.ok else status_of(reply.error.code if reply.error else "")
    return Response(reply, status_code=status)


def _command_route(spec: CommandSpec) -> HTTPRouteHandler:
    async def handle(models: NamedDependency[ReadModels], request: Request[Any, Any, Any]) -> Response[Reply]:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        return await _forward(models, request, spec, body)

    handle.__name__ = f"command_{spec.service}_{spec.name}"
    handle.__doc__ = f"{spec.summary} (`{spec.subject}`)"
    return post(spec.http_path, tags=["commands"], status_code=200, opt={"access": COMMAND},
                operation_id=f"{spec.service}_{spec.name}", summary=spec.key,
                name=f"command:{spec.key}")(handle)


@post("/v1/rollouts", tags=["commands"], status_code=200, opt={"access": COMMAND}, operation_id="start_rollout")
async def start_rollout(models: NamedDependency[ReadModels], request: Request[Any, Any, Any]) -> Response[Reply]:
    """Start a rollout: the body of `rollout.start` (the same as `POST /v1/commands/rollout/start`)."""
    body = await _body(request)
    if isinstance(body, Response):
        return body
    return await _forward(models, request, spec_of("rollout", "start"), body)


@post("/v1/rollouts/{rollout_id:str}/{action:str}", tags=["commands"], status_code=200, opt={"access": COMMAND},
      operation_id="act_on_rollout")
async def act_on_rollout(models: NamedDependency[ReadModels], request: Request[Any, Any, Any],
                         rollout_id: FromPath[str], action: FromPath[str]) -> Response[Reply]:
    """pause | resume | abort | promote | rollback | ignore_windows one rollout: the body of that
    command without `rollout_id` (taken from the path; all its other fields are optional)."""
    if action not in ACTIONS:
        return _refused("invalid", f"unknown action {action!r}; one of {', '.join(ACTIONS)}", "action", 400)
    body = await _body(request)
    if isinstance(body, Response):
        return body
    return await _forward(models, request, spec_of("rollout", action), {**body, "rollout_id": rollout_id})


ROUTES = [start_rollout, act_on_rollout, *(_command_route(spec) for spec in COMMANDS)]


def document_commands(document: dict[str, Any]) -> dict[str, Any]:
    """Give every command operation of an OpenAPI document its request body and reply, from the
    same definitions as the published JSON Schemas (named `contract.<Type>` among the components)."""
    defs = schema.components()
    ref = "#/components/schemas/contract."

    def body(name: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": {"$ref": ref + name}}}}

    def replies(spec: CommandSpec) -> dict[str, Any]:
        answer = {"content": {"application/json": {"schema": {"$ref": ref + reply_type(spec).__name__}}}}
        return {"200": {"description": "Done: `ok` true.", **answer},
                **{str(status): {"description": f"Refused: `error.code` = `{code}`.", **answer}
                   for code, status in sorted(((e.code, e.http_status) for e in REFUSALS), key=lambda item: item[1])}}

    paths = document.setdefault("paths", {})
    for spec in COMMANDS:
        operation = paths.get(spec.http_path, {}).get("post")
        if operation is not None:
            operation["requestBody"] = body(spec.command.__name__)
            operation["responses"] = {**operation.get("responses", {}), **replies(spec)}
            operation["description"] = (spec.command.__doc__ or "").strip()
    start = paths.get("/v1/rollouts", {}).get("post")
    if start is not None:
        start["requestBody"] = body(spec_of("rollout", "start").command.__name__)
        start["responses"] = {**start.get("responses", {}), **replies(spec_of("rollout", "start"))}
    act = paths.get("/v1/rollouts/{rollout_id}/{action}", {}).get("post")
    if act is not None:  # the command's body, `rollout_id` taken from the path
        act["requestBody"] = {"required": False, "description": "The body of `rollout.<action>` without `rollout_id`.",
                              "content": {"application/json": {"schema": {"anyOf": [
                                  {"$ref": ref + spec_of("rollout", "pause").command.__name__},
                                  {"$ref": ref + spec_of("rollout", "rollback").command.__name__}]}}}}
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in defs.items():
        schemas[f"contract.{name}"] = _rebased(definition, ref)
    return document


def _rebased(value: Any, ref: str) -> Any:
    """A definition with its `#/$defs/X` references pointing at `contract.X` among the components."""
    if isinstance(value, dict):
        return {k: (v.replace("#/$defs/", ref) if k == "$ref" and isinstance(v, str) else _rebased(v, ref))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_rebased(v, ref) for v in value]
    return value
