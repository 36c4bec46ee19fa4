"""`fleet up` supervises its servers as it does its parts: a kill -9 of nats-server or PostgreSQL
is noticed, shown by `fleet status` (restarts, last exit) and repaired on the same port, and the
system answers again; a restart of `fleet up` right after a stop keeps its ports (while old
connections sit in TIME-WAIT), so a connected fleet reconnects and no device goes offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from shared.embedded import free_port
from tests.e2e.test_up import FLEET, fleet, status, wait_for

DEVICES = 60
OFFLINE_WINDOW = 4.0
UP = ["up", "--heartbeat-interval", "1s", "--offline-after", "4"]  # offline after 4 s of silence


def _start(data: Path, env: dict[str, str], api_port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([*FLEET, "--data-dir", str(data), *UP, "--api-port", str(api_port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def _running(data: Path) -> dict[str, Any] | None:
    result = fleet(data, "status", "--json")  # 5 while nothing runs (or only the last run's status.json)
    up: dict[str, Any] | None = json.loads(result.stdout)["up"] if result.returncode == 0 else None
    if up and all(p["state"] == "running" for p in [*up["parts"], *up["servers"]]):
        return up
    return None


def _server(data: Path, name: str) -> dict[str, Any]:
    server: dict[str, Any] = next(s for s in status(data)["up"]["servers"] if s["name"] == name)
    return server


def _online(data: Path) -> int:
    result = fleet(data, "sites", "--json")
    if result.returncode != 0:
        return -1
    return sum(site["counts"]["online"] for site in json.loads(result.stdout)["sites"])


def _offline_events(data: Path, out: Path) -> int:
    exported = fleet(data, "audit", "export", "--out", str(out), timeout=120)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    return out.read_text().count("DeviceWentOffline")


def _stop(up: subprocess.Popen[bytes]) -> None:
    up.send_signal(signal.SIGTERM)
    assert up.wait(timeout=90) == 0


@pytest.mark.timeout(420)
def test_servers_come_back_on_their_ports_and_the_fleet_stays_online(tmp_path: Path) -> None:
    data = tmp_path / "fleet"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    api_port = free_port()
    up = _start(data, env, api_port, tmp_path / "up.log")
    sim = None
    try:
        first = wait_for(lambda: _running(data), what="every server and part running")
        assert {s["name"] for s in first["servers"]} == {"nats", "postgres"}
        wait_for(lambda: status(data)["api"] is not None, what="the API to answer")
        with (tmp_path / "sim.log").open("ab") as out:
            sim = subprocess.Popen([*FLEET, "--data-dir", str(data), "simulate", "--devices", str(DEVICES),
                                    "--sites", "3", "--interval", "1s", "--seed", "3"],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: _online(data) == DEVICES, what="the simulated fleet online")

        # kill -9 of nats-server: reaped (no zombie), restarted on its port, commands work again
        nats = _server(data, "nats")
        os.kill(nats["pid"], signal.SIGKILL)
        back = wait_for(lambda: (s if (s := _server(data, "nats"))["restarts"] == 1 and s["state"] == "running"
                                 else None), what="nats-server restarted")
        assert back["last_exit"] == -signal.SIGKILL and back["pid"] != nats["pid"]
        assert not psutil.pid_exists(nats["pid"]) or psutil.Process(nats["pid"]).status() != "zombie"
        assert status(data)["up"]["nats_url"] == first["nats_url"]
        wait_for(lambda: fleet(data, "site", "add", "after-nats").returncode == 0, what="a command after the restart")

        # kill -9 of the postmaster: restarted, the read models answer again
        postgres = _server(data, "postgres")
        os.kill(postgres["pid"], signal.SIGKILL)
        wait_for(lambda: (s if (s := _server(data, "postgres"))["restarts"] >= 1 and s["state"] == "running"
                          else None), what="PostgreSQL restarted")
        assert _server(data, "postgres")["last_exit"] == -signal.SIGKILL
        wait_for(lambda: _online(data) == DEVICES, what="the read models answering again")

        # stop, start again at once: the same ports, the fleet reconnects, nobody goes offline
        _stop(up)
        up = _start(data, env, api_port, tmp_path / "up.log")
        again = wait_for(lambda: _running(data), what="everything running after the restart")
        assert again["nats_url"] == first["nats_url"]
        wait_for(lambda: _online(data) == DEVICES and fleet(data, "site", "add", "after-restart").returncode == 0,
                 what="commands and the fleet after the restart")
        time.sleep(3 * OFFLINE_WINDOW)  # by now drift has declared offline any device that did not reconnect
        assert _offline_events(data, tmp_path / "log.jsonl") == 0  # a device that never came back would be here
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGTERM)
            sim.wait(timeout=30)
        if up.poll() is None:
            _stop(up)
