"""The audit service as `fleet up` runs it: the signing key created 0600 under the data dir and
announced once, checkpoints every FLEET_AUDIT_EVERY events, a last one at shutdown (the audit
part stops after the others), and `fleet audit verify` intact across a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared.embedded import free_port
from tests.e2e.test_up import FLEET, fleet, status, wait_for


def start(data: Path) -> subprocess.Popen[str]:
    # its output goes to a file: an unread pipe would block `fleet up` once full
    log = (data.parent / "up.log").open("a")
    up = subprocess.Popen([*FLEET, "--data-dir", str(data), "up", "--api-port", str(free_port())],
                          env={**os.environ, "FLEET_AUDIT_EVERY": "5"}, stdout=log,
                          stderr=subprocess.STDOUT, text=True)
    log.close()
    wait_for(lambda: (data / "endpoints.json").exists() and all(
        p["state"] == "running" for p in status(data)["up"]["parts"]), what="all parts running")
    return up


def stop(up: subprocess.Popen[str]) -> None:
    up.send_signal(signal.SIGTERM)
    up.wait(timeout=60)
    assert up.returncode == 0


def verify(data: Path, *args: str) -> dict[str, Any]:
    result = fleet(data, "audit", "verify", "--json", *args)
    assert result.returncode in (0, 7), result.stderr
    decoded: dict[str, Any] = json.loads(result.stdout)
    return decoded


@pytest.mark.timeout(300)
def test_fleet_up_signs_its_log_and_checkpoints_at_shutdown(tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = start(data)
    try:
        for i in range(7):
            assert fleet(data, "site", "add", f"plant-{i}").returncode == 0
        keys = wait_for(lambda: json.loads(fleet(data, "audit", "key", "--json").stdout), what="key announced")
        assert (data / "secrets" / "audit-signing.key").stat().st_mode & 0o777 == 0o600
        pin = keys[0]["public_key"]
        report = wait_for(lambda: (r := verify(data, "--key", pin))["checkpoints"] >= 1 and r, what="a checkpoint")
        assert report["intact"], report
        head = report["to_seq"]
    finally:
        stop(up)

    up = start(data)  # the shutdown checkpoint covers everything written before the stop
    try:
        report = verify(data, "--key", pin)
        assert report["intact"], report
        assert report["signed_through"] >= head
        assert len(json.loads(fleet(data, "audit", "key", "--json").stdout)) == 1  # announced once
    finally:
        stop(up)
