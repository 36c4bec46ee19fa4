"""`fleet up`: everything on one machine, supervised.

Starts the embedded NATS and PostgreSQL (unless external URLs are given), makes sure the event
log stream exists, then runs each part — the four services, the projection runner and the API —
as its own `fleet service NAME` process. A part that exits is restarted with exponential backoff
(the restart is logged and counted). SIGINT/SIGTERM stop the parts in reverse order, then the
servers, leaving no process behind. `endpoints.json` lets the CLI find everything with no flags;
`status.json` (rewritten every second) is what `fleet status` shows. A lock file keeps a second
`fleet up` off the same data dir.

`fleet up --cluster 3` is the scale-out topology on one machine (DESIGN §13): three nats-server
nodes from deploy/nats/ on loopback instead of one, and two instances of every part (`NAME` and
`NAME-2`; the second API on its own port), so failover can be tried by killing any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec

from shared.aio import wait_set
from shared.cluster import ensure_log
from shared.config import Endpoints, Settings, write_endpoints
from shared.connection import connect_nats
from shared.embedded import EmbeddedNats, EmbeddedPostgres, die_with_parent, free_port
from shared.embedded_cluster import EmbeddedNatsCluster
from shared.errors import Conflict
from shared.times import format_time, utcnow

log = logging.getLogger("fleet.up")
PARTS = ("registry", "snapshot", "drift", "rollout", "projections", "api")
STATUS_FILE = "status.json"


class PartStatus(msgspec.Struct):
    """One supervised part as `fleet status` shows it."""

    name: str
    pid: int | None = None
    instance: int = 1  # 2 for the second instance of a part (`fleet up --cluster`)
    up_since: str | None = None
    restarts: int = 0
    state: str = "starting"  # starting running restarting stopped
    last_exit: int | None = None


class UpStatus(msgspec.Struct):
    """What `fleet up` is running now."""

    pid: int
    started_at: str
    nats_url: str
    api_url: str
    database_embedded: bool
    parts: list[PartStatus] = []


@dataclass
class _Part:
    status: PartStatus
    service: str = ""  # what `fleet service` runs ("" = status.name)
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    ran_since: float = field(default_factory=time.monotonic)


class Supervisor:
    """Runs and watches the parts of one Fleetplane deployment."""

    def __init__(self, settings: Settings, *, api_port: int | None = None, parts: tuple[str, ...] = PARTS,
                 log_dir: Path | None = None, cluster: int = 0) -> None:
        self.settings = settings
        self.cluster_size = cluster  # 0: one embedded nats-server; 3: a cluster and two instances
        self.cluster: EmbeddedNatsCluster | None = None
        self.data = settings.data_path.resolve()
        self.api_port = api_port
        self.part_names = parts
        self.log_dir = log_dir or self.data / "logs"
        self.parts: dict[str, _Part] = {}
        self.nats: EmbeddedNats | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.stopping = asyncio.Event()
        self._lock: IO[str] | None = None
        self.env: dict[str, str] = {}
        self.status: UpStatus | None = None

    def _take_lock(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        handle = (self.data / "fleet-up.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise Conflict(f"another `fleet up` is already running on {self.data}; stop it first or use "
                           "another --data-dir", field="data_dir") from None
        self._lock = handle

    async def start(self) -> UpStatus:
        """Start servers and parts; returns once everything has been launched."""
        self._take_lock()
        nats_url = self.settings.nats_url
        if not nats_url and self.cluster_size:
            self.cluster = EmbeddedNatsCluster(self.data / "nats-cluster", self.cluster_size,
                                               ports=_ports_from(self.data / "nats-cluster.ports"))
            await self.cluster.start()
            (self.data / "nats-cluster.ports").write_text(msgspec.json.encode(self.cluster.ports()).decode())
            nats_url = self.cluster.url
        if not nats_url:
            self.nats = await EmbeddedNats(self.data / "nats", port=_port_from(self.data / "nats.port")).start()
            (self.data / "nats.port").write_text(str(self.nats.port))
            nats_url = self.nats.url
        database_url = self.settings.database_url
        if not database_url:
            self.postgres = await EmbeddedPostgres(self.data / "postgres",
                                                   port=_port_from(self.data / "postgres.port")).start()
            (self.data / "postgres.port").write_text(str(self.postgres.port))
            database_url = await self._database(self.postgres)
        api_url = self.settings.api_url or f"http://127.0.0.1:{self.api_port or free_port()}"
        nc = await connect_nats(msgspec.structs.replace(self.settings, nats_url=nats_url), "up")
        await ensure_log(nc, self.settings)
        await nc.close()
        self.env = {**os.environ, "FLEET_NATS_URL": nats_url, "FLEET_DATABASE_URL": database_url,
                    "FLEET_API_URL": api_url, "FLEET_DATA_DIR": str(self.data)}
        for name in ("heartbeat_interval", "offline_after", "drift_grace", "reconcile_backoff",
                     "reconcile_max_tries", "replicas", "lease_ttl"):
            self.env[f"FLEET_{name.upper()}"] = str(getattr(self.settings, name))
        write_endpoints(self.data, Endpoints(nats_url=nats_url, database_url=database_url, api_url=api_url,
                                             pid=os.getpid()))
        self.status = UpStatus(pid=os.getpid(), started_at=format_time(utcnow()), nats_url=nats_url,
                               api_url=api_url, database_embedded=self.postgres is not None)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self.part_names:
            part = self.parts[name] = _Part(PartStatus(name), service=name)
            part.task = asyncio.create_task(self._supervise(part))
        if self.cluster_size:  # the second instance of every part (on the local or an external cluster)
            for name in self.part_names:
                env = {"FLEET_API_URL": f"http://127.0.0.1:{free_port()}"} if name == "api" else {}
                part = self.parts[f"{name}-2"] = _Part(PartStatus(f"{name}-2", instance=2), service=name, env=env)
                part.task = asyncio.create_task(self._supervise(part))
        return self.status

    async def _database(self, server: EmbeddedPostgres) -> str:
        import asyncpg

        conn = await asyncpg.connect(server.dsn())
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'fleet'")
            if not exists:
                await conn.execute('CREATE DATABASE "fleet"')
        finally:
            await conn.close()
        return server.dsn("fleet")

    async def _supervise(self, part: _Part) -> None:
        failures = 0
        while not self.stopping.is_set():
            logfile = (self.log_dir / f"{part.status.name}.log").open("ab")
            part.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fleet", "service", part.service or part.status.name,
                env={**self.env, **part.env},
                stdout=logfile, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=die_with_parent)
            logfile.close()
            part.ran_since = time.monotonic()
            part.status.pid, part.status.state = part.proc.pid, "running"
            part.status.up_since = format_time(utcnow())
            code = await part.proc.wait()
            part.status.last_exit, part.status.pid = code, None
            if self.stopping.is_set():
                break
            failures = 0 if time.monotonic() - part.ran_since > 30 else failures + 1
            delay = min(30.0, 0.5 * 2 ** failures)
            part.status.restarts += 1
            part.status.state = "restarting"
            log.warning("part %s exited with %s; restart #%d in %.1fs", part.status.name, code,
                        part.status.restarts, delay)
            await wait_set(self.stopping, delay)
        part.status.state = "stopped"

    def write_status(self) -> None:
        """Rewrite status.json for `fleet status`."""
        if self.status is None:
            return
        self.status.parts = [p.status for p in self.parts.values()]
        path = self.data / STATUS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(self.status))
        tmp.replace(path)

    async def run_until_stopped(self) -> None:
        """Keep status.json fresh until SIGINT/SIGTERM, then stop everything."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        while not self.stopping.is_set():
            self.write_status()
            await wait_set(self.stopping, 1.0)
        await self.stop()

    async def stop(self) -> None:
        """Stop the parts in reverse order, then the servers."""
        self.stopping.set()
        for name in reversed(list(self.parts)):
            part = self.parts[name]
            if part.proc is not None and part.proc.returncode is None:
                part.proc.terminate()
                try:
                    await asyncio.wait_for(part.proc.wait(), 10)
                except TimeoutError:
                    part.proc.kill()
                    await part.proc.wait()
            if part.task is not None:
                await part.task
        self.write_status()
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
        if self._lock is not None:  # only the holder of the data dir cleans it up
            (self.data / "endpoints.json").unlink(missing_ok=True)
            self._lock.close()
            self._lock = None


def _port_from(path: Path) -> int | None:
    """Reuse the port of the last run so clients that cached it keep working."""
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    with contextlib.suppress(OSError):
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            return port
    return None


def _ports_from(path: Path) -> list[tuple[int, int, int]] | None:
    """The cluster's ports of the last run (a restarted node must find its routes again)."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=list[tuple[int, int, int]])
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def read_status(data_dir: Path) -> UpStatus | None:
    """The last status.json written by `fleet up` in `data_dir` (None when there is none)."""
    path = data_dir / STATUS_FILE
    if not path.exists():
        return None
    return msgspec.json.decode(path.read_bytes(), type=UpStatus)
