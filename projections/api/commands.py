"""Commands over HTTP (DESIGN §7): the API forwards them to the owning service over NATS and
returns its reply unchanged (`{"ok", "events", "result"}`), with the HTTP status of its error
code. The events' highest sequence can be passed back as `min_seq` to read your own writes.

The API sends under its own NATS identity, on behalf of the caller's authenticated principal
(`Fleet-On-Behalf-Of: operator:<token name>`, DESIGN §11); a body cannot name an actor."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from projections.api.auth import COMMAND, principal_of
from projections.api.queries import ReadModels
from shared.commands import CommandClient, Reply

_STATUS = {"invalid": 400, "not_found": 404, "conflict": 409, "forbidden": 403, "unavailable": 503}
ACTIONS = ("pause", "resume", "abort", "promote", "rollback", "ignore_windows")


class StartRollout(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /v1/rollouts (the fields of `fleet rollout start`)."""

    snapshot_id: str
    target: str = ""
    rollout_id: str | None = None
    canary: str = ""
    waves: str = "100"
    max_in_flight: int = 0  # 0: the default rule (services/rollout/domain.py, in_flight_rule)
    max_in_flight_percent: float | None = None  # a share of each wave, e.g. 10.0
    bake: str = "0s"
    apply_timeout: str = "5m"
    min_healthy: str = "90%"
    max_failed: str = "5%"
    max_offline: str = "10%"
    metrics: list[str] = []
    on_failure: str = "pause"
    approve_after: list[int] = []
    dry_run: bool = False
    not_before: str | None = None
    ignore_windows: bool = False
    rollback_in_windows: bool = False
    command_id: str | None = None


class RolloutAction(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of POST /v1/rollouts/{id}/{action} (all optional)."""

    reason: str = ""
    to_snapshot_id: str | None = None
    plan_only: bool = False
    command_id: str | None = None


async def _forward(models: ReadModels, request: Request[Any, Any, Any], command: str,
                   body: dict[str, Any]) -> Response[Reply]:
    body = {k: v for k, v in body.items() if v is not None}
    principal = str(principal_of(request))
    client = CommandClient(models.log.nc, actor=principal)  # sent as Fleet-On-Behalf-Of
    reply = await client.request("rollout", command, body)
    status = 200 if reply.ok else _STATUS.get(reply.error.code if reply.error else "", 500)
    return Response(reply, status_code=status)


@post("/v1/rollouts", tags=["commands"], status_code=200, opt={"access": COMMAND})
async def start_rollout(models: NamedDependency[ReadModels], request: Request[Any, Any, Any],
                        data: JSONBody[StartRollout]) -> Response[Reply]:
    """Start a rollout (forwarded to the rollout service)."""
    return await _forward(models, request, "start", msgspec.structs.asdict(data))


@post("/v1/rollouts/{rollout_id:str}/{action:str}", tags=["commands"], status_code=200, opt={"access": COMMAND})
async def act_on_rollout(models: NamedDependency[ReadModels], request: Request[Any, Any, Any],
                         rollout_id: FromPath[str], action: FromPath[str],
                         data: JSONBody[RolloutAction | None] = None) -> Response[Reply]:
    """pause | resume | abort | promote | rollback | ignore_windows one rollout (forwarded to the rollout
    service)."""
    if action not in ACTIONS:
        from shared.commands import ErrorBody

        return Response(Reply(ok=False, error=ErrorBody("invalid", f"unknown action {action!r}; one of "
                                                                   f"{', '.join(ACTIONS)}", "action")),
                        status_code=400)
    args = msgspec.structs.asdict(data) if data is not None else {}
    body: dict[str, Any] = {"rollout_id": rollout_id, "command_id": args.get("command_id")}
    if action == "rollback":
        body.update(to_snapshot_id=args.get("to_snapshot_id"), plan_only=args.get("plan_only", False),
                    reason=args.get("reason", ""))
    else:
        body["reason"] = args.get("reason", "")
    return await _forward(models, request, action, body)


ROUTES = [start_rollout, act_on_rollout]
