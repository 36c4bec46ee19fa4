# ruff: noqa: PLR0917 - a handler's parameters are its HTTP query parameters
"""The query API (DESIGN §7): Litestar over the read models, msgspec types in and out, OpenAPI at
`/openapi.json` generated from those types.

Every answer carries `as_of_seq` and `lag`; `min_seq` waits (bounded) for read-your-writes; every
list/summary endpoint takes `at` (RFC 3339) or `at_seq` for a historical answer. Bad input is a
400 naming the parameter, a missing thing a 404, PostgreSQL or NATS down a 503.
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Annotated, Any, Literal, TypeVar

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, Router, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components
from litestar.params import FromQuery, PathParameter, QueryParameter
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from projections.api.auth import (
    METRICS,
    PUBLIC,
    READ,
    SECURITY,
    SECURITY_SCHEMES,
    AuthPolicy,
    BadHost,
    default_allowed_hosts,
    document_refusals,
    gatekeeper,
    may_read,
)
from projections.api.commands import ROUTES as COMMAND_ROUTES
from projections.api.commands import document_commands
from projections.api.dashboard import dashboard
from projections.api.diff import DiffAnswer, DiffDevice, DiffDevicePage, fleet_diff
from projections.api.fleet_metrics import exposition
from projections.api.queries import (
    CHANGES,
    FLEET,
    ChangeFilter,
    DeviceFilter,
    ReadModels,
    make_cursor,
    query_key,
    read_cursor,
)
from projections.api.schemas import (
    ChangePage,
    DeviceAnswer,
    DevicePage,
    ErrorAnswer,
    Health,
    ProjectionsAnswer,
    RolloutAnswer,
    RolloutPage,
    SitePage,
    SnapshotPage,
    Summary,
)
from projections.api.tokens import ROUTES as TOKEN_ROUTES
from projections.selector import parse as parse_selector
from shared.errors import FleetError, Invalid, NotFound, Unavailable, code_of_status
from shared.ids import check_id
from shared.liveness import gather_reports
from shared.metrics import QUERY_SECONDS
from shared.selectors import EVERYTHING
from shared.times import parse_duration, parse_time, utcnow
from shared.transient import PG_TRANSIENT
from shared.wire import ErrorBody

log = logging.getLogger(__name__)
EXPOSITION = "text/plain; version=0.0.4"  # Prometheus's text format, read by every version (Litestar adds the charset)

Models = NamedDependency[ReadModels]
Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="Page size.")]
Cursor = Annotated[str | None, QueryParameter(description="next_cursor of the previous page of this query.",
                                         max_length=512)]
At = Annotated[str | None, QueryParameter(description="RFC 3339 time: answer as the fleet stood then.",
                                     max_length=64)]
AtSeq = Annotated[int | None, QueryParameter(ge=0, description="Log sequence: answer as of it.")]
MinSeq = Annotated[int | None, QueryParameter(ge=0, description="Wait (bounded) until this sequence is applied.")]
Id = Annotated[str, PathParameter(max_length=128)]
Text = Annotated[str | None, QueryParameter(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$",
                                           description="No control characters.")]
HealthName = Literal["ok", "degraded", "failed", "unknown"]

ERRORS = {
    400: ResponseSpec(ErrorAnswer, description="Bad input; `error.field` names the parameter."),
    404: ResponseSpec(ErrorAnswer, description="No such device or rollout (at that moment)."),
    503: ResponseSpec(ErrorAnswer, description="PostgreSQL or NATS unavailable, or min_seq not reached in time."),
}


def _id(value: str | None, field: str) -> str | None:
    return None if value is None else check_id(value, field)


async def _when(models: Models, at: str | None, at_seq: int | None,
                min_seq: int | None, name: str = FLEET) -> int | None:
    moment = None if at is None else parse_time(at, "at")
    await models.wait_for(min_seq, name)
    return await models.resolve(moment, at_seq)


@get("/healthz", sync_to_thread=False, tags=["health"])
def healthz() -> Health:
    """The process is up."""
    return Health(ok=True)


@get("/readyz", tags=["health"], responses={503: ResponseSpec(Health, description="Not ready.")})
async def readyz(request: Request[Any, Any, Any], models: Models) -> Response[Health]:
    """Ready when every projection runs and is within the lag bound of the log, no part has a
    stalled duty (which, since when), and drift's picture of the devices is fresh. Events a
    projection skipped as poison do not make it unready: they are listed as warnings. Anyone gets
    ok / not ok; the details (and an error's text) only a caller with read access."""
    if await may_read(request):
        ok, detail = await _readiness(models)
        return Response(Health(ok=ok, detail=detail), status_code=200 if ok else 503)
    try:
        ok, _ = await _readiness(models)
    except Exception:  # a public probe learns "not ready"; the log says why
        log.warning("readiness check failed", exc_info=True)
        ok = False
    return Response(Health(ok=ok), status_code=200 if ok else 503)


async def _readiness(models: Models) -> tuple[bool, dict[str, Any]]:
    answer = await models.projections()
    problems: dict[str, Any] = {}
    warnings: dict[str, Any] = {}
    for p in answer.items:
        if p.state != "running" or p.lag is None or p.lag > models.ready_lag:
            problems[p.name] = {"state": p.state, "lag": p.lag}
        if p.poisoned:
            warnings[p.name] = {"poisoned": p.poisoned, "last_seq": p.error_seq, "last_error": p.error}
    names = {p.name for p in answer.items}
    for name in (FLEET, CHANGES):
        if name not in names:
            problems[name] = {"state": "missing"}
    stalled = await _stalled_duties(models)
    if stalled:
        problems["duties"] = stalled
    if models.picture is not None and models.picture.freshness.stale:
        problems["device_state"] = msgspec.to_builtins(models.picture.freshness)
    ok = not problems and answer.log_last_seq is not None
    return ok, {**problems, **({"warnings": warnings} if warnings else {})}


async def _stalled_duties(models: ReadModels) -> list[dict[str, str | None]]:
    """Every part's stalled duties, by asking them all (shared.liveness): part, instance, duty, since."""
    try:
        reports = await gather_reports(models.log.nc, wait=0.3)
    except Exception:  # NATS away: the log head check above already says so
        return []
    return [{"part": r.part, "instance": r.instance, "duty": d.name, "since": d.stalled_since}
            for r in reports for d in r.stalled]


@get("/metrics", media_type=EXPOSITION, tags=["health"], responses={503: ERRORS[503]})
async def metrics(models: Models) -> bytes:
    """Prometheus text: this API process's own metrics (query latency, ...) and the fleet's state
    from the read models (devices by site and state, rollouts, projections, the log); each other
    part serves its own on FLEET_METRICS_PORT (docs/monitoring.md)."""
    return await exposition(models)


def timed(app: ASGIApp) -> ASGIApp:
    """Middleware: every routed request's latency into fleet_query_seconds{route,status}."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            route = str(scope.get("path_template") or "unrouted")
            QUERY_SECONDS.labels(route, str(status[0])).observe(time.perf_counter() - started)

    return middleware


@get("/openapi.json", include_in_schema=False, sync_to_thread=False)
def openapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The OpenAPI 3 document."""
    schema: dict[str, Any] = request.app.openapi_schema.to_schema()
    return document_refusals(document_commands(schema))


@get("/v1/summary", tags=["queries"], responses=ERRORS)
async def summary(models: Models, site: Text = None, snapshot: Text = None, at: At = None,
                  at_seq: AtSeq = None, min_seq: MinSeq = None) -> Summary:
    """What runs where: device counts by site x reported snapshot, and by state."""
    seq = await _when(models, at, at_seq, min_seq)
    return _with_picture(models, await models.summary(seq, at, site=_id(site, "site"),
                                                      snapshot=_id(snapshot, "snapshot")))


_Pictured = TypeVar("_Pictured", Summary, DevicePage, DeviceAnswer, SitePage)


def _with_picture(models: ReadModels, answer: _Pictured) -> _Pictured:
    """A live answer built on drift's picture says how fresh that picture is."""
    if answer.historical or models.picture is None:
        return answer
    return msgspec.structs.replace(answer, device_state=models.picture.freshness)


@get("/v1/devices", tags=["queries"], responses=ERRORS)
async def devices(
    models: Models, site: Text = None, snapshot: Text = None, desired_snapshot: Text = None,
    health: FromQuery[HealthName | None] = None, online: FromQuery[bool | None] = None,
    drifted: FromQuery[bool | None] = None, problems: FromQuery[bool | None] = None, rollout: Text = None,
    selector: Text = None, order: FromQuery[Literal["id", "worst"]] = "id",
    include_retired: FromQuery[bool] = False, cursor: Cursor = None, limit: Limit = 100, at: At = None,
    at_seq: AtSeq = None, min_seq: MinSeq = None,
) -> DevicePage:
    """Devices by id; filters combine with AND. `problems=true`: offline, failed, degraded, drifted
    or stuck. `order=worst`: the worst problem first (offline, failed, stuck, degraded, drifted,
    then acknowledged stuck or drifted devices, then the rest), then by id. `selector`: e.g.
    `site in (a,b),tier=edge`."""
    flt = DeviceFilter(site=_id(site, "site"), snapshot=_id(snapshot, "snapshot"),
                       desired_snapshot=_id(desired_snapshot, "desired_snapshot"), health=health,
                       online=online, drifted=drifted, problems=problems, rollout=_id(rollout, "rollout"),
                       include_retired=include_retired,
                       selector=parse_selector(selector) if selector else EVERYTHING,
                       selector_text=selector)
    seq = await _when(models, at, at_seq, min_seq)
    return _with_picture(models, await models.devices(flt, cursor, limit, seq, at_text=at, order=order))


@get("/v1/devices/{device_id:str}", tags=["queries"], responses=ERRORS)
async def device(models: Models, device_id: Id, at: At = None, at_seq: AtSeq = None,
                 min_seq: MinSeq = None) -> DeviceAnswer:
    """One device."""
    check_id(device_id, "device_id")
    seq = await _when(models, at, at_seq, min_seq)
    return _with_picture(models, await models.device(device_id, seq, at))


def _change_filter(since: str | None, start: str | None, end: str | None, order: str, **ids: str | None
                   ) -> ChangeFilter:
    if since is not None and start is not None:
        raise Invalid("give either since or from", field="since")
    begin = parse_time(start, "from") if start is not None else None
    if since is not None:
        from datetime import timedelta

        begin = utcnow() - timedelta(seconds=parse_duration(since, "since"))
    checked = {k: (v if k == "actor" or v is None else check_id(v, k)) for k, v in ids.items()}
    return ChangeFilter(start=begin, end=parse_time(end, "to") if end is not None else None,
                        order=order, **checked)


@get("/v1/devices/{device_id:str}/history", tags=["queries"], responses=ERRORS)
async def device_history(models: Models, device_id: Id, cursor: Cursor = None, limit: Limit = 100,
                         order: FromQuery[Literal["asc", "desc"]] = "desc", at: At = None, at_seq: AtSeq = None,
                         min_seq: MinSeq = None) -> ChangePage:
    """Every change concerning one device."""
    check_id(device_id, "device_id")
    seq = await _when(models, at, at_seq, min_seq, CHANGES)
    page = await models.changes(ChangeFilter(device=device_id, order=order), cursor, limit, seq, at_text=at,
                                endpoint="history")
    if not page.items and cursor is None:
        await models.device(device_id, seq, at)  # 404 when the device is unknown
    return page


@get("/v1/changes", tags=["queries"], responses=ERRORS)
async def changes(
    models: Models,
    since: Annotated[str | None, QueryParameter(description="Back from now, e.g. 1h30m, 30d.", max_length=32)] = None,
    start: Annotated[str | None, QueryParameter(name="from", description="RFC 3339", max_length=64)] = None,
    end: Annotated[str | None, QueryParameter(name="to", description="RFC 3339", max_length=64)] = None,
    device: Text = None, site: Text = None, snapshot: Text = None, rollout: Text = None, actor: Text = None,
    type: Text = None,
    order: FromQuery[Literal["asc", "desc"]] = "desc", cursor: Cursor = None, limit: Limit = 100, at: At = None,
    at_seq: AtSeq = None, min_seq: MinSeq = None,
) -> ChangePage:
    """State changes (every known event), newest first unless order=asc."""
    flt = _change_filter(since, start, end, order, device=device, site=site, snapshot=snapshot,
                         rollout=rollout, actor=actor, type=type)
    seq = await _when(models, at, at_seq, min_seq, CHANGES)
    return await models.changes(flt, cursor, limit, seq, at_text=at)


@get("/v1/rollouts", tags=["queries"], responses=ERRORS)
async def rollouts(models: Models, cursor: Cursor = None, limit: Limit = 100, at: At = None,
                   at_seq: AtSeq = None, min_seq: MinSeq = None) -> RolloutPage:
    """Rollouts by id (status, wave, counts, last gate result)."""
    seq = await _when(models, at, at_seq, min_seq)
    return await models.rollouts(cursor, limit, seq, at)


@get("/v1/rollouts/{rollout_id:str}", tags=["queries"], responses=ERRORS)
async def rollout(models: Models, rollout_id: Id, at: At = None, at_seq: AtSeq = None,
                  min_seq: MinSeq = None) -> RolloutAnswer:
    """One rollout."""
    check_id(rollout_id, "rollout_id")
    seq = await _when(models, at, at_seq, min_seq)
    return await models.rollout(rollout_id, seq, at)


@get("/v1/snapshots", tags=["queries"], responses=ERRORS)
async def snapshots(models: Models, cursor: Cursor = None, limit: Limit = 100, at: At = None,
                    at_seq: AtSeq = None, min_seq: MinSeq = None) -> SnapshotPage:
    """Snapshots by id, with how many devices report running each."""
    seq = await _when(models, at, at_seq, min_seq)
    return await models.snapshots(cursor, limit, seq, at)


@get("/v1/sites", tags=["queries"], responses=ERRORS)
async def sites(models: Models, order: FromQuery[Literal["id", "worst"]] = "id",
                problems: FromQuery[bool | None] = None, cursor: Cursor = None, limit: Limit = 100,
                at: At = None, at_seq: AtSeq = None, min_seq: MinSeq = None) -> SitePage:
    """Site health: each site's devices online, offline, degraded, failed, drifted, stuck and the
    snapshots running there. `order=worst`: the largest share offline or failed first, then stuck,
    degraded or drifted. `problems=true`: only sites with a device in trouble."""
    seq = await _when(models, at, at_seq, min_seq)
    return _with_picture(models, await models.sites(cursor, limit, seq, at, order=order, problems=problems))


Moment = Annotated[str | None, QueryParameter(
    description="RFC 3339 time, or a log sequence (digits).", max_length=64)]


async def _seq_of(models: Models, text: str | None, field: str) -> int | None:
    """The log sequence a `from`/`to` names (None: not given)."""
    if text is None:
        return None
    if text.strip().isdigit():
        seq = int(text)
        head = await models.log_head()
        if head is not None and seq > head:
            head = await models.log_head(max_age=0)
        if head is not None and seq > head:
            raise Invalid(f"sequence {seq} is beyond the end of the log ({head})", field=field)
        return seq
    moment = parse_time(text, field)
    if moment > utcnow():
        raise Invalid(f"{text} is in the future", field=field)
    return await models.pit.seq_at(moment)


async def _diff_window(models: Models, start: str | None, end: str | None, min_seq: int | None) -> tuple[int, int]:
    await models.wait_for(min_seq, CHANGES)
    from_seq = await _seq_of(models, start, "from")
    if from_seq is None:
        raise Invalid("from is required (an RFC 3339 time or a log sequence)", field="from")
    to_seq = await _seq_of(models, end, "to")
    if to_seq is None:
        async with models.pool.acquire() as conn:
            to_seq = await models.checkpoint(conn, CHANGES)
    return from_seq, to_seq


@get("/v1/diff", tags=["queries"], responses=ERRORS)
async def diff(
    models: Models,
    start: Annotated[str | None, QueryParameter(name="from", description="RFC 3339 time or log sequence.",
                                                max_length=64)] = None,
    end: Annotated[str | None, QueryParameter(name="to", description="RFC 3339 time or log sequence "
                                              "(default: now).", max_length=64)] = None,
    site: Text = None, selector: Text = None, min_seq: MinSeq = None,
) -> DiffAnswer:
    """What changed between two moments: per site and snapshot (as run at `to`), how many devices
    moved from what to what (snapshot, online, health, drift, registered), with a few of their ids;
    `GET /v1/diff/devices?group=KEY` pages through all of a group's devices. `selector` matches the
    devices' labels as they are now."""
    from_seq, to_seq = await _diff_window(models, start, end, min_seq)
    computed = await fleet_diff(models.pool, models.diffs, from_seq, to_seq, site=_id(site, "site"),
                                selector=parse_selector(selector) if selector else EVERYTHING,
                                selector_text=selector)
    return DiffAnswer(from_seq=from_seq, to_seq=to_seq, as_of_seq=to_seq, lag=await models.lag(to_seq),
                      changes=computed.changes, devices_changed=len(computed.devices), totals=computed.totals,
                      groups=computed.groups)


@get("/v1/diff/devices", tags=["queries"], responses=ERRORS)
async def diff_devices(
    models: Models,
    group: Annotated[str, QueryParameter(description="The `key` of a group of GET /v1/diff.", max_length=1024)],
    start: Annotated[str | None, QueryParameter(name="from", max_length=64)] = None,
    end: Annotated[str | None, QueryParameter(name="to", max_length=64)] = None,
    site: Text = None, selector: Text = None, cursor: Cursor = None, limit: Limit = 100,
    min_seq: MinSeq = None,
) -> DiffDevicePage:
    """The devices behind one number of a diff, by id, with their state at both ends."""
    from_seq, to_seq = await _diff_window(models, start, end, min_seq)
    computed = await fleet_diff(models.pool, models.diffs, from_seq, to_seq, site=_id(site, "site"),
                                selector=parse_selector(selector) if selector else EVERYTHING,
                                selector_text=selector)
    found = next((g for g in computed.groups if g.key == group), None)
    if found is None:
        raise NotFound(f"no group {group!r} in this diff", field="group")
    key = query_key("diff", {"from": from_seq, "to": to_seq, "site": site, "selector": selector, "group": group})
    after = read_cursor(cursor, key)
    ids = computed.members[group]
    start_at = 0 if after is None else bisect.bisect_right(ids, str(after))
    page = ids[start_at:start_at + limit]
    more = start_at + limit < len(ids)
    items = [DiffDevice(device_id=d, before=computed.devices[d][0], after=computed.devices[d][1]) for d in page]
    return DiffDevicePage(from_seq=from_seq, to_seq=to_seq, as_of_seq=to_seq, group=found, items=items,
                          next_cursor=make_cursor(key, page[-1]) if more else None)


@get("/v1/projections", tags=["operations"], responses=ERRORS)
async def projections(models: Models) -> ProjectionsAnswer:
    """Each projection: checkpoint, lag, rate, state, and the poison event if it stopped."""
    return await models.projections()


# --- errors ------------------------------------------------------------------------------------------

def _error(status: int, code: str, message: str, field: str | None) -> Response[ErrorAnswer]:
    return Response(ErrorAnswer(error=ErrorBody(code=code, message=message, field=field)), status_code=status)


def _on_fleet_error(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorAnswer]:
    assert isinstance(exc, FleetError)
    return _error(exc.http_status, exc.code, exc.message, exc.field)


def _on_validation(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorAnswer]:
    assert isinstance(exc, ValidationException)
    extra = exc.extra if isinstance(exc.extra, list) else []
    first = extra[0] if extra and isinstance(extra[0], dict) else {}
    field = first.get("key")
    message = first.get("message") or exc.detail
    return _error(400, "invalid", f"{field}: {message}" if field else str(message), field)


def _on_http(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorAnswer]:
    assert isinstance(exc, HTTPException)
    code = code_of_status(exc.status_code)
    response = _error(exc.status_code, code, exc.detail, "host" if isinstance(exc, BadHost) else None)
    response.headers.update(exc.headers or {})
    return response


def _on_db_down(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorAnswer]:
    log.warning("read models unavailable: %r", exc)
    return _error(503, Unavailable.code, f"the read-model database is unavailable ({type(exc).__name__})", None)


def _on_db_error(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorAnswer]:
    if isinstance(exc, asyncpg.exceptions.UndefinedTableError | asyncpg.exceptions.InvalidSchemaNameError):
        return _error(503, Unavailable.code, "the read models are not built yet", None)
    if isinstance(exc, PG_TRANSIENT):
        return _on_db_down(_, exc)
    log.exception("query failed", exc_info=exc)
    return _error(500, "internal", "the query failed", None)


def _on_too_deep(_: Request[Any, Any, Any], exc: RecursionError) -> Response[ErrorAnswer]:
    return _error(400, "invalid", "the body nests too deeply", "body")


def _on_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorAnswer]:
    log.error("query failed", exc_info=exc)
    return _error(500, "internal", f"the query failed ({type(exc).__name__})", None)


def create_app(models: Models, auth: AuthPolicy | None = None) -> Litestar:
    """The Litestar application over `models`. `auth` says how requests are checked (default:
    tokens from the `fleet_tokens` bucket on the models' NATS connection, this host's loopback
    names on port 8080, /metrics behind a token)."""
    if auth is None:
        from shared.tokens import TokenVerifier

        auth = AuthPolicy(TokenVerifier(models.log.nc), default_allowed_hosts("http://127.0.0.1:8080"))

    def provide_models() -> ReadModels:
        return models

    # Each router gives its routes an access level (projections.api.auth) and, unless public,
    # the bearer scheme in OpenAPI; a route may still declare its own level in `opt`.
    routers = [
        Router("/", route_handlers=[healthz, readyz, dashboard, openapi_json], opt={"access": PUBLIC}),
        Router("/", route_handlers=[metrics], opt={"access": METRICS},
               security=None if auth.metrics_public else SECURITY),
        # (commands and tokens declare their own, higher, level; one router, because two routers
        # serving one path each add an OPTIONS handler for it)
        Router("/", route_handlers=[summary, devices, device, device_history, changes, rollouts, rollout,
                                    snapshots, sites, diff, diff_devices, projections, *COMMAND_ROUTES,
                                    *TOKEN_ROUTES],
               opt={"access": READ}, security=SECURITY),
    ]
    return Litestar(
        route_handlers=routers,
        guards=[gatekeeper],
        middleware=[timed],
        state=State({"auth": auth}),
        dependencies={"models": Provide(provide_models, sync_to_thread=False)},
        exception_handlers={
            FleetError: _on_fleet_error,
            ValidationException: _on_validation,
            HTTPException: _on_http,
            asyncpg.PostgresError: _on_db_error,
            asyncpg.InterfaceError: _on_db_down,
            OSError: _on_db_down,
            TimeoutError: _on_db_down,
            RecursionError: _on_too_deep,  # JSON nested beyond what the decoder follows
            Exception: _on_unexpected,
        },
        openapi_config=OpenAPIConfig(title="Fleetplane query API", version="1",
                                     components=Components(security_schemes=SECURITY_SCHEMES), path="/schema"),
        debug=False,
        logging_config=None,  # the process's JSON lines (shared/logs.py), not Litestar's own format
    )
