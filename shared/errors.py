"""One error root for Fleetplane. Every error carries a stable `code` that crosses the wire.

Adapters translate library errors (NATS API errors, asyncpg errors) into these at the boundary;
command errors go back to the caller in the reply shape of DESIGN §3.
"""

from __future__ import annotations

from typing import ClassVar


class FleetError(Exception):
    """Root of every error Fleetplane raises on purpose."""

    code: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class Invalid(FleetError):
    """The input is malformed or breaks a rule; nothing was changed."""

    code = "invalid"


class NotFound(FleetError):
    """A referenced site, device, snapshot, rollout or command does not exist."""

    code = "not_found"


class Conflict(FleetError):
    """Someone else wrote first, or the request contradicts the current state."""

    code = "conflict"


class Forbidden(FleetError):
    """The caller may not do this."""

    code = "forbidden"


class Unauthenticated(FleetError):
    """The caller did not prove who it is (no, or a revoked, credential)."""

    code = "unauthenticated"


class Unavailable(FleetError):
    """A server (NATS, PostgreSQL) could not be reached; the same call may succeed later."""

    code = "unavailable"
    retryable = True


class StreamMisconfigured(FleetError):
    """The event log stream exists with settings weaker than the contract; we refuse to start."""

    code = "misconfigured"


ERRORS_BY_CODE: dict[str, type[FleetError]] = {
    cls.code: cls for cls in (Invalid, NotFound, Conflict, Forbidden, Unauthenticated, Unavailable, FleetError)
}


def error_from_code(code: str, message: str, field: str | None = None) -> FleetError:
    """Rebuild a typed error from the code carried in a reply."""
    return ERRORS_BY_CODE.get(code, FleetError)(message, field=field)
