"""Each `FleetError` carries its HTTP status and CLI exit code (issue 25 item 4): the API's error
answers and the CLI's exit statuses read them, for an error raised here and for one rebuilt from
the code a reply carried."""

from __future__ import annotations

import msgspec
import pytest
import typer
from litestar import Litestar, get
from litestar.exceptions import HTTPException
from litestar.testing import TestClient

from fleet.cli.common import fail
from projections.api.app import _on_fleet_error, _on_http
from shared import errors
from shared.errors import FleetError

TABLE = [  # code, HTTP status, exit status: the operator-facing promise (docs/cli.md lists the exits)
    ("invalid", 400, 2), ("unauthenticated", 401, 6), ("forbidden", 403, 6), ("not_found", 404, 3),
    ("conflict", 409, 4), ("unavailable", 503, 5), ("misconfigured", 500, 2), ("internal", 500, 1),
]


@pytest.mark.parametrize(("code", "status", "exit_status"), TABLE)
def test_an_error_code_answers_its_status_and_exit(code: str, status: int, exit_status: int) -> None:
    error = errors.error_from_code(code, "no")
    assert error.code == code
    assert (errors.status_of(code), errors.exit_code_of(code)) == (status, exit_status)
    with pytest.raises(typer.Exit) as exited:
        fail(error)
    assert exited.value.exit_code == exit_status

    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise error

    app = Litestar([boom], exception_handlers={FleetError: _on_fleet_error}, debug=False)
    with TestClient(app) as client:
        answer = client.get("/boom")
    assert answer.status_code == status
    assert msgspec.json.decode(answer.content)["error"]["code"] == code


def test_a_status_of_the_framework_answers_the_code_of_that_status() -> None:
    for code, status, _ in TABLE:
        if status < 500:
            assert errors.code_of_status(status) == code
    assert errors.code_of_status(405) == "invalid"
    assert errors.code_of_status(502) == "internal"

    app = Litestar([], exception_handlers={HTTPException: _on_http}, debug=False)
    with TestClient(app) as client:
        missing = client.get("/nowhere")
    assert missing.status_code == 404 and msgspec.json.decode(missing.content)["error"]["code"] == "not_found"


def test_unknown_codes_are_internal() -> None:
    assert (errors.status_of("gone"), errors.exit_code_of("gone")) == (500, 1)
