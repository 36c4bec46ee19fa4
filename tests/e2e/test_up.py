"""`fleet up` as a user runs it: start, `fleet status`, a killed part comes back, a second
`fleet up` on the same data dir is refused, SIGTERM leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from shared.embedded import free_port

FLEET = [sys.executable, "-m", "fleet"]
T = TypeVar("T")


def fleet(data: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLEET, "--data-dir", str(data), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def wait_for(predicate: Callable[[], T | None], timeout: float = 120, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def status(data: Path) -> dict[str, Any]:
    result = fleet(data, "status", "--json")
    assert result.returncode == 0, result.stderr
    decoded: dict[str, Any] = json.loads(result.stdout)
    return decoded


def spans_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.timeout(300)
def test_up_status_restart_trace_and_clean_stop(tmp_path: Path) -> None:
    data = tmp_path / "fleet"
    trace_file = tmp_path / "spans.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["FLEET_TRACE_FILE"] = str(trace_file)
    up = subprocess.Popen([*FLEET, "--data-dir", str(data), "up", "--api-port", str(free_port())],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_for(lambda: (data / "status.json").exists() and all(
            p["state"] == "running" for p in status(data)["up"]["parts"]), what="all parts running")
        wait_for(lambda: status(data)["api"] is not None, what="the API to answer")
        endpoints = json.loads((data / "endpoints.json").read_text())
        assert endpoints["nats_url"].startswith("nats://127.0.0.1:")
        assert (data / "endpoints.json").stat().st_mode & 0o777 == 0o600
        # Least privilege: secrets only under secrets/ (0700, files 0600), never in endpoints.json,
        # the environment or the arguments of a part; a PostgreSQL role per part that needs one.
        secrets = data / "secrets"
        assert secrets.stat().st_mode & 0o777 == 0o700
        assert {f.name: f.stat().st_mode & 0o777 for f in secrets.iterdir() if f.name in ("pgpass", "api-token")} == {
            "pgpass": 0o600, "api-token": 0o600}
        # Logs and status are the owner's alone (0600 in 0700 folders): another local user reads
        # none of them (they name identities, key fingerprints and refused subjects).
        private = [data / "status.json", data / "nats" / "nats-server.log", data / "postgres" / "postgres.log",
                   *(data / "logs").glob("*.log"), data / "nats.port", data / "postgres.port", data / "fleet-up.lock"]
        assert {f.name: f.stat().st_mode & 0o777 for f in private} == {f.name: 0o600 for f in private}
        assert {d.name: d.stat().st_mode & 0o777 for d in (data / "logs", data / "nats")} == {"logs": 0o700,
                                                                                           "nats": 0o700}
        if os.geteuid() == 0:
            for f in private:
                assert subprocess.run(["cat", str(f)], user=65534, capture_output=True, check=False).returncode != 0
        passwords = [line.rsplit(":", 1)[1] for line in (secrets / "pgpass").read_text().splitlines()]
        superuser_password = (data / "postgres" / "password").read_text().strip()
        assert endpoints["database_url"].startswith("postgresql://fleet_owner@")
        token = (secrets / "api-token").read_text().strip()
        for part in status(data)["up"]["parts"]:
            proc = psutil.Process(part["pid"])
            seen = " ".join(proc.cmdline()) + " " + json.dumps(proc.environ())
            for secret in (*passwords, superuser_password, token):
                assert secret not in seen, part["name"]
            database = proc.environ().get("FLEET_DATABASE_URL")
            want = {"projections": "fleet_owner", "api": "fleet_reader"}.get(part["name"])
            assert (database.split("//", 1)[1].split("@", 1)[0] if database else None) == want, part["name"]
        raw = (data / "endpoints.json").read_text()
        assert not any(secret in raw for secret in (*passwords, superuser_password, token))
        # The CLI finds the owner's role and its password file through endpoints.json alone.
        rebuilt = fleet(data, "projections", "rebuild", "changes", "--json", timeout=120)
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr

        second = fleet(data, "up")
        assert second.returncode == 4
        assert "already running" in second.stderr
        assert (data / "endpoints.json").exists()  # the refused second run touched nothing

        parts = {p["name"]: p for p in status(data)["up"]["parts"]}
        os.kill(parts["registry"]["pid"], signal.SIGKILL)
        restarted = wait_for(lambda: next((p for p in status(data)["up"]["parts"] if p["name"] == "registry"
                                           and p["restarts"] == 1 and p["state"] == "running"), None),
                             what="registry to be restarted")
        assert restarted["pid"] != parts["registry"]["pid"]
        # The restarted slot takes back the lease its killed run held, without waiting for it to
        # run out (the slot's name is the same across restarts: FLEET_INSTANCE).
        assert psutil.Process(restarted["pid"]).environ()["FLEET_INSTANCE"].endswith("/registry")
        wait_for(lambda: "lease registry-checkpoints: reclaimed from an earlier run"
                 in (data / "logs" / "registry.log").read_text(), what="the registry to reclaim its lease")

        # One command, one trace: from the CLI, through NATS into the registry, into the event it
        # appended, and on into the projection that applied that event.
        added = subprocess.run([*FLEET, "--data-dir", str(data), "site", "add", "traced-site"], env=env,
                               capture_output=True, text=True, timeout=60, check=False)
        assert added.returncode == 0, added.stderr
        cli = wait_for(lambda: next((sp for sp in spans_of(trace_file) if sp["service"] == "fleet-cli"), None),
                       what="the CLI's span")
        trace = wait_for(lambda: ({sp["service"]: sp for sp in spans_of(trace_file) if sp["trace_id"] == cli["trace_id"]}
                                  if len({sp["service"] for sp in spans_of(trace_file)
                                          if sp["trace_id"] == cli["trace_id"]}) >= 3 else None),
                         what="CLI, registry and projection spans in one trace")
        assert trace["fleet-cli"]["name"] == "send registry.add_site"
        assert trace["fleet-registry"]["name"] == "command registry.add_site"
        assert trace["fleet-projections"]["name"].endswith("SiteAdded")

        # The drift commands through the CLI: a device the registry never saw is "not found" (3);
        # one that is registered but not drifting cannot be acknowledged (conflict, 4).
        unknown = fleet(data, "drift", "acknowledge", "nobody", "--json")
        assert unknown.returncode == 3 and "not registered" in unknown.stdout + unknown.stderr
        assert fleet(data, "device", "add", "quiet-1", "--site", "traced-site").returncode == 0
        calm = wait_for(lambda: (r if (r := fleet(data, "drift", "acknowledge", "quiet-1")).returncode != 3 else None),
                        what="the drift service to know quiet-1")
        assert calm.returncode == 4 and "not drifted" in calm.stdout + calm.stderr

        # /metrics: the API's (with the projections' lag) behind a token; each service's on its own
        # port, listed by `fleet status`
        api_url = status(data)["api_url"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{api_url}/metrics", timeout=10)
        assert refused.value.code == 401
        refused.value.close()
        token = (data / "secrets" / "api-token").read_text().strip()
        request = urllib.request.Request(f"{api_url}/metrics", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            metrics = response.read().decode()
        assert 'fleet_projection_lag_events{projection="fleet"}' in metrics
        registry_metrics = next(p["metrics_url"] for p in status(data)["up"]["parts"] if p["name"] == "registry")
        with urllib.request.urlopen(registry_metrics, timeout=10) as response:
            metrics = response.read().decode()
        assert 'fleet_commands_total{command="add_site",result="ok",service="registry"}' in metrics
        assert 'fleet_append_seconds_bucket{le="0.005"}' in metrics
        # `fleet up` itself: the identity duties that run in it (revocations, renewals)
        up_metrics = json.loads((data / "endpoints.json").read_text())["metrics"]["up"]
        assert status(data)["up"]["metrics_url"] == up_metrics
        with urllib.request.urlopen(up_metrics, timeout=10) as response:
            metrics = response.read().decode()
        assert 'fleet_part_info{part="up"} 1.0' in metrics and "fleet_identity_revocations_total" in metrics

        children = [c.pid for c in psutil.Process(up.pid).children(recursive=True)]
        assert len(children) >= 8  # six parts, nats-server, postgres
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert "stopped" in output
    time.sleep(0.5)
    left = [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert left == []
    assert not (data / "endpoints.json").exists()
    assert fleet(data, "status").returncode == 5  # nothing running any more
