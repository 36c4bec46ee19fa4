"""Who may call the query API, and how (DESIGN §11): one guard on every route.

In order, for every request: the `Host` header must be one the API answers to (400 otherwise:
no DNS rebinding; public GETs such as probes are exempt); a state-changing request
(POST/PUT/PATCH/DELETE) with an `Origin` header must come from the API's own origin (403) and
must say `Content-Type: application/json` (415), which no HTML form can send; then, unless the
route is public, a bearer token (401 without a valid one) whose role grants the route's access
level (403 otherwise). Errors have the API's error shape. Routes declare their level in
`opt={"access": ...}`; a route that declares none needs admin, so a new route is closed until
someone opens it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import Reference, SecurityScheme

from shared.tokens import Principal, TokenVerifier

PUBLIC, READ, COMMAND, AUDIT, ADMIN = "public", "read", "command", "audit", "admin"
METRICS = "metrics"  # READ, or PUBLIC when FLEET_METRICS_PUBLIC is set
GRANTS: dict[str, frozenset[str]] = {
    "viewer": frozenset({READ}),
    "operator": frozenset({READ, COMMAND}),
    "auditor": frozenset({READ, AUDIT}),
    "admin": frozenset({READ, COMMAND, AUDIT, ADMIN}),
}
SCHEME_NAME = "bearer"
SECURITY: list[dict[str, list[str]]] = [{SCHEME_NAME: []}]
SECURITY_SCHEMES: dict[str, SecurityScheme | Reference] = {SCHEME_NAME: SecurityScheme(
    type="http", scheme="bearer", bearer_format="fpt_<id>_<secret>",
    description="A token from `fleet token create --role viewer|operator|auditor|admin --name NAME`.")}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PRINCIPAL_KEY = "fleet_principal"


class UnsupportedMediaType(HTTPException):
    """415: a state-changing request that is not JSON."""

    status_code = 415


class BadHost(HTTPException):
    """400: a Host header the API does not answer to."""

    status_code = 400


@dataclass(frozen=True)
class AuthPolicy:
    """What the guard checks against."""

    verifier: TokenVerifier
    allowed_hosts: frozenset[str]  # lower-case `host[:port]` values; "*" allows any
    metrics_public: bool = False

    def host_allowed(self, host: str) -> bool:
        """Whether a Host header (with or without its port) is one of ours."""
        host = host.strip().lower()
        if "*" in self.allowed_hosts or host in self.allowed_hosts:
            return True
        return _strip_port(host) in self.allowed_hosts


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [::1]:8080
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def default_allowed_hosts(api_url: str, configured: str = "") -> frozenset[str]:
    """`FLEET_API_ALLOWED_HOSTS` (comma-separated), else the API's own host:port and the loopback
    names on that port."""
    if configured.strip():
        return frozenset(h.strip().lower() for h in configured.split(",") if h.strip())
    url = urlsplit(api_url)
    default_port = 443 if url.scheme == "https" else 80
    port = url.port or default_port
    names = {(url.hostname or "127.0.0.1").lower(), "127.0.0.1", "localhost", "[::1]"}
    names = {f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names}
    allowed = {f"{name}:{port}" for name in names}
    if port == default_port:  # browsers leave the default port out of Host
        allowed |= names
    return frozenset(allowed)


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The principal the guard authenticated for this request."""
    principal = connection.scope.get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):
        raise NotAuthorizedException("no authenticated principal")
    return principal


def _same_origin(origin: str, host: str) -> bool:
    parts = urlsplit(origin)
    return bool(parts.scheme in ("http", "https") and parts.netloc) and parts.netloc.lower() == host.strip().lower()


async def gatekeeper(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The guard of every route: Host, then origin and content type, then token and role."""
    policy: AuthPolicy = connection.app.state.auth
    host = connection.headers.get("host", "")
    safe = connection.scope.get("method", "GET") in _SAFE_METHODS
    access = handler.opt.get("access", ADMIN)
    if access == METRICS:
        access = PUBLIC if policy.metrics_public else READ
    # Public reads (probes, the page's HTML, the OpenAPI document) answer any Host: a Kubernetes
    # probe sends the pod's IP, and they hold nothing a rebinding page could use.
    if not (safe and access == PUBLIC) and not policy.host_allowed(host):
        raise BadHost(f"the API does not answer to Host {host[:100]!r} (see FLEET_API_ALLOWED_HOSTS)")
    if not safe:
        origin = connection.headers.get("origin")
        if origin is not None and not _same_origin(origin, host):
            raise PermissionDeniedException(f"cross-origin request from {origin[:100]!r} refused")
        media = connection.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise UnsupportedMediaType("state-changing requests must be sent as Content-Type: application/json")
    if access == PUBLIC:
        return
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException("a bearer token is required (Authorization: Bearer fpt_...)",
                                     headers={"WWW-Authenticate": "Bearer"})
    principal = await policy.verifier.authenticate(token.strip())
    if principal is None:
        raise NotAuthorizedException("the token is unknown, revoked or malformed",
                                     headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if access not in GRANTS.get(principal.role, frozenset()):
        raise PermissionDeniedException(f"role {principal.role} may not do this ({access} access needed)")
    connection.scope[PRINCIPAL_KEY] = principal  # type: ignore[literal-required]  # our key in the ASGI scope TypedDict


async def may_read(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Whether a request to a public route also carries what a read route would need (an allowed
    Host and a token of a role with read access): such a caller gets the details a public answer
    leaves out (`/readyz`)."""
    policy: AuthPolicy = connection.app.state.auth
    if not policy.host_allowed(connection.headers.get("host", "")):
        return False
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    principal = await policy.verifier.authenticate(token.strip())
    return principal is not None and READ in GRANTS.get(principal.role, frozenset())


def document_refusals(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the 401 and 403 answers to every operation of an OpenAPI document that needs a token."""
    error = {"$ref": "#/components/schemas/ErrorAnswer"}
    refusals = {
        "401": {"description": "No valid bearer token (`error.code` = `unauthenticated`).",
                "content": {"application/json": {"schema": error}}},
        "403": {"description": "The token's role may not do this (`error.code` = `forbidden`).",
                "content": {"application/json": {"schema": error}}},
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and operation.get("security"):
                operation.setdefault("responses", {}).update(refusals)
    return schema
