"""Alive means working, under `fleet up` (issue #26): a part cut off from NATS for good exits
non-zero and is restarted; a part that runs but does not answer for its duties is restarted too;
meanwhile `fleet status`, `/readyz`, the summary and so the dashboard say which duty stalled and
that the device state is stale since when, instead of a frozen "all online".

Drift is cut off from outside the way a server does it for good: its identity is revoked (an
account update through `$SYS`); nats-py then closes the connection without reconnecting, the state
the drift service was found in at 300,000 devices. It is hung with SIGSTOP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest

from shared.auth import jwt
from shared.auth.authority import Authority, push_account
from shared.auth.roles import FLEET
from shared.embedded import free_port
from tests.e2e.test_up import FLEET as FLEET_CMD
from tests.e2e.test_up import status, wait_for


def _get(api: str, token: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(f"{api}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


def _part(data: Path, name: str) -> dict[str, Any]:
    return next(p for p in status(data)["up"]["parts"] if p["name"] == name)


def _set_revoked(data: Path, revoked: bool) -> None:
    """Revoke the drift part's identity (or lift that) on the running server."""
    secrets = data / "secrets"
    authority = Authority.load_or_create(secrets)
    user = jwt.read_claims(jwt.jwt_of_creds((secrets / "drift.creds").read_text())).sub
    if revoked:
        account = authority.revoke_key(user, int(time.time()) + 1)
    else:
        authority.state.revocations.pop(user, None)
        account = authority.account_jwt(FLEET)

    async def push() -> None:
        nats_url = json.loads((data / "endpoints.json").read_text())["nats_url"]
        system = await nats.connect(nats_url, user_credentials=str(secrets / "system.creds"))
        try:
            await push_account(system, account)
        finally:
            await system.close()

    asyncio.run(push())


@pytest.mark.timeout(420)
def test_a_cut_off_or_hung_part_is_restarted_and_the_views_flag_the_stall(tmp_path: Path) -> None:
    data = tmp_path / "fleet"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env |= {"FLEET_DUTY_BOUND": "8s", "FLEET_HEARTBEAT_INTERVAL": "1s"}
    up = subprocess.Popen([*FLEET_CMD, "--data-dir", str(data), "up", "--api-port", str(free_port())],
                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: (data / "status.json").exists() and all(
            p["state"] == "running" and p["answered_at"] for p in status(data)["up"]["parts"]),
            what="every part running and answering for its duties")
        api, token = status(data)["api_url"], (data / "secrets" / "api-token").read_text().strip()

        def picture() -> dict[str, Any]:
            code, summary = _get(api, token, "/v1/summary")
            assert code == 200, summary
            state: dict[str, Any] = summary["device_state"]
            return state

        wait_for(lambda: not picture()["stale"], what="a fresh device state")
        first = _part(data, "drift")

        # 1. Cut off for good: drift exits non-zero and is restarted; the views say stale meanwhile.
        _set_revoked(data, True)
        stale = wait_for(lambda: (p if (p := picture())["stale"] else None), what="the summary to flag the stall")
        assert stale["stale_since"] and stale["reason"]
        code, ready = _get(api, token, "/readyz")
        assert code == 503 and ready["detail"]["device_state"]["stale"] is True
        exited = wait_for(lambda: (p if (p := _part(data, "drift"))["restarts"] > first["restarts"] else None),
                          what="drift to exit and be restarted")
        assert exited["last_exit"] not in (None, 0)
        _set_revoked(data, False)
        wait_for(lambda: _part(data, "drift")["state"] == "running" and not picture()["stale"],
                 timeout=180, what="drift back and the device state fresh again")

        # 2. Hung (answers nothing, does nothing): the duty check restarts it.
        hung = _part(data, "drift")
        os.kill(hung["pid"], signal.SIGSTOP)
        flagged = wait_for(lambda: (p if (p := _part(data, "drift"))["stalled"] else None),
                           what="fleet status to name the stalled duty")
        assert flagged["stalled"] == "answering" and flagged["stalled_since"]
        assert picture()["stale"]
        again = wait_for(lambda: (p if (p := _part(data, "drift"))["restarts"] > hung["restarts"]
                                  and p["state"] == "running" else None), what="the hung drift restarted")
        assert again["pid"] != hung["pid"] and "answering stalled since" in again["restarted_for"]
        wait_for(lambda: not picture()["stale"], timeout=180, what="the device state fresh after the restart")
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(10)
