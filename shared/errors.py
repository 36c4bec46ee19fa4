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
    http_status: ClassVar[int] = 500  # the API's answer (`status_of`)
    exit_code: ClassVar[int] = 1  # the CLI's exit status (`exit_code_of`); 0 is success

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class Invalid(FleetError):
    """The input is malformed or breaks a rule; nothing was changed."""

    code = "invalid"
    http_status = 400
    exit_code = 2


class NotFound(FleetError):
    """A referenced site, device, snapshot, rollout or command does not exist."""

    code = "not_found"
    http_status = 404
    exit_code = 3


class Conflict(FleetError):
    """Someone else wrote first, or the request contradicts the current state."""

    code = "conflict"
    http_status = 409
    exit_code = 4


class Forbidden(FleetError):
    """The caller may not do this."""

    code = "forbidden"
    http_status = 403
    exit_code = 6


class Unauthenticated(FleetError):
    """The caller did not prove who it is (no, or a revoked, credential)."""

    code = "unauthenticated"
    http_status = 401
    exit_code = 6


class Unavailable(FleetError):
    """A server (NATS, PostgreSQL) could not be reached; the same call may succeed later."""

    code = "unavailable"
    http_status = 503
    exit_code = 5
    retryable = True


class StreamMisconfigured(FleetError):
    """The event log stream exists with settings weaker than the contract; we refuse to start."""

    code = "misconfigured"
    http_status = 500
    exit_code = 2


ERRORS_BY_CODE: dict[str, type[FleetError]] = {
    cls.code: cls for cls in (Invalid, NotFound, Conflict, Forbidden, Unauthenticated, Unavailable,
                              StreamMisconfigured, FleetError)
}
# What a caller may be refused with (an HTTP status each; the rest is a 500).
REFUSALS: tuple[type[FleetError], ...] = (Invalid, Unauthenticated, Forbidden, NotFound, Conflict, Unavailable)


def status_of(code: str) -> int:
    """The HTTP status of an error code (500: an unknown or internal one)."""
    return ERRORS_BY_CODE.get(code, FleetError).http_status


def exit_code_of(code: str) -> int:
    """The CLI's exit status for an error code (1: an unknown or internal one)."""
    return ERRORS_BY_CODE.get(code, FleetError).exit_code


def code_of_status(status: int) -> str:
    """The error code of an HTTP status the web framework answered with (`invalid` for any
    other 4xx, `internal` for 5xx)."""
    found = next((cls.code for cls in REFUSALS if cls.http_status == status), None)
    return found or ("invalid" if status < 500 else "internal")


def error_from_code(code: str, message: str, field: str | None = None) -> FleetError:
    """Rebuild a typed error from the code carried in a reply."""
    return ERRORS_BY_CODE.get(code, FleetError)(message, field=field)
