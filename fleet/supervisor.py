"""`fleet up`: everything on one machine, supervised.

Starts the embedded NATS and PostgreSQL (unless external URLs are given), makes sure the event
log stream exists, then runs each part — the audit checkpoint writer, the four services, the
projection runner and the API — as its own `fleet service NAME` process. A part that exits is
restarted with exponential backoff (the restart is logged and counted), and so is an embedded
nats-server or PostgreSQL that dies: on the same port and data, so every client — parts, agents,
the CLI — reconnects to the URL it already has (the ports are kept in the data dir across runs
too). SIGINT/SIGTERM stop the parts in reverse order, then the servers, leaving no process behind.
`endpoints.json` lets the CLI find everything with no flags; the embedded NATS runs in JWT mode
(DESIGN §11): on first start the operator/account keys are made under `<data-dir>/secrets/`
(0700), each part gets its own identity through
`FLEET_NATS_CREDS` (a path, never the secret itself), the CLI gets an admin and an operator
identity there, and the `authority` part (services.authority) revokes the identity of every
retired device and answers renewals;
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
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import msgspec
from nats.aio.client import Client as NATS

from shared import metrics
from shared.aio import wait_set
from shared.auth.authority import Authority
from shared.cluster import ensure_all
from shared.config import ADMIN_CREDS, OPERATOR_CREDS, Endpoints, Settings, write_endpoints
from shared.connection import connect_nats
from shared.embedded import EmbeddedNats, EmbeddedPostgres, die_with_parent, free_port
from shared.embedded_cluster import EmbeddedNatsCluster
from shared.errors import Conflict
from shared.liveness import PartReport, gather_reports
from shared.pgroles import ensure_roles
from shared.secretfiles import open_log, private_dir, secrets_dir, write_private
from shared.times import format_time, utcnow
from shared.tokens import bootstrap_admin_token

log = logging.getLogger("fleet.up")
# audit first: started first, stopped last, so its shutdown checkpoint covers everything the others wrote
PARTS = ("audit", "authority", "registry", "snapshot", "drift", "rollout", "projections", "api")
# The services need no database: a blank URL also hides the one endpoints.json names.
_NO_DATABASE = {"FLEET_DATABASE_URL": ""}

# The identity each part runs under (shared.auth.roles).
PART_ROLES = {"registry": "service:registry", "snapshot": "service:snapshot", "drift": "service:drift",
              "rollout": "service:rollout", "projections": "service:projections", "api": "api",
              "audit": "service:audit", "authority": "service:authority"}
STATUS_FILE = "status.json"
START_GRACE = 60.0  # seconds a started part may take to answer for its duties the first time


class PartStatus(msgspec.Struct):
    """One supervised part as `fleet status` shows it."""

    name: str
    pid: int | None = None
    instance: int = 1  # 2 for the second instance of a part (`fleet up --cluster`)
    up_since: str | None = None
    restarts: int = 0
    state: str = "starting"  # starting running restarting stopped
    last_exit: int | None = None
    metrics_url: str | None = None  # where Prometheus scrapes it
    # Its duties (shared.liveness), for the parts: which one stalled ("answering" when the part
    # stopped answering at all) and since when; why it was last restarted by the duty check.
    stalled: str | None = None
    stalled_since: str | None = None
    answered_at: str | None = None
    restarted_for: str | None = None


class UpStatus(msgspec.Struct):
    """What `fleet up` is running now."""

    pid: int
    started_at: str
    nats_url: str
    api_url: str
    database_embedded: bool
    parts: list[PartStatus] = []
    servers: list[PartStatus] = []  # the embedded nats-server(s) and PostgreSQL
    metrics_url: str | None = None  # the supervisor's own (identity revocations and renewals)


@dataclass
class _Part:
    status: PartStatus
    service: str = ""  # what `fleet service` runs ("" = status.name)
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    ran_since: float = field(default_factory=time.monotonic)
    answered: float = 0.0  # monotonic time of its last answer on $SRV.DUTIES


class _Runs(Protocol):
    """What runs an embedded server: EmbeddedNats, EmbeddedPostgres, a cluster node."""

    proc: subprocess.Popen[bytes] | None


@dataclass
class _Server:
    """An embedded server watched like a part: what runs it, and how to start it again."""

    status: PartStatus
    runs: _Runs
    restart: Callable[[], Awaitable[object]]
    ran_since: float = field(default_factory=time.monotonic)


class Verdict(msgspec.Struct, frozen=True):
    """What the duty check concludes about one running part."""

    stalled: str | None = None  # the stalled duty, "answering", or None when all is well
    since: str | None = None  # RFC 3339
    restart: bool = False


def judge(report: PartReport | None, *, quiet_for: float, bound: float, last_answer: str | None) -> Verdict:
    """The duty check's rule (pure): a part that answers with a stalled duty is restarted; one
    that has not answered for `bound` seconds (`quiet_for`: since its start, its last answer, or
    the checker's own connection coming up, whichever is latest) is restarted too."""
    if report is not None:
        stalled = report.stalled
        if stalled:
            return Verdict(stalled[0].name, stalled[0].stalled_since, restart=True)
        return Verdict()
    if quiet_for > bound:
        return Verdict("answering", last_answer, restart=True)
    return Verdict()


def _backoff(failures: int, ran_since: float) -> tuple[int, float]:
    """(failures, delay) after an exit: a run longer than 30 s resets the count; 0.5 s doubling to 30 s."""
    failures = 0 if time.monotonic() - ran_since > 30 else failures + 1
    return failures, min(30.0, 0.5 * 2 ** failures)


class Supervisor:
    """Runs and watches the parts of one Fleetplane deployment."""

    def __init__(self, settings: Settings, *, api_port: int | None = None, parts: tuple[str, ...] = PARTS,
                 log_dir: Path | None = None, cluster: int = 0, serve_metrics: bool = False) -> None:
        self.settings = settings
        self.cluster_size = cluster  # 0: one embedded nats-server; 3: a cluster and two instances
        self.serve_metrics = serve_metrics  # this process's own /metrics too (`fleet up`; once per process)
        self.metrics_url: str | None = None
        self.cluster: EmbeddedNatsCluster | None = None
        self.data = settings.data_path.resolve()
        self.api_port = api_port
        self.part_names = parts
        self.log_dir = log_dir or self.data / "logs"
        self.parts: dict[str, _Part] = {}
        self.servers: list[_Server] = []
        self.nats: EmbeddedNats | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.stopping = asyncio.Event()
        self._lock: IO[str] | None = None
        self.env: dict[str, str] = {}
        self.part_env: dict[str, dict[str, str]] = {}
        self.token_file: Path | None = None
        self.status: UpStatus | None = None
        self.authority: Authority | None = None
        self.creds: dict[str, str] = {}  # part -> its credentials file
        self.admin_creds: str | None = None  # the CLI's admin identity (tests and benchmarks connect as it)
        self._duties: list[asyncio.Task[None]] = []
        self._duty_conns: list[NATS] = []  # the duty check's own connection

    def slot(self, part: str) -> str:
        """The FLEET_INSTANCE of a part: its slot's name, the same across its restarts."""
        return f"{socket.gethostname()}:{self.data.resolve()}/{part}"

    def part_holding(self, holder: str) -> str | None:
        """The part whose slot a lease holder's name (`service@<slot>`) is, if one of ours."""
        slot = holder.split("@", 1)[-1]
        return next((name for name in self.parts if self.slot(name) == slot), None)

    def _take_lock(self) -> None:
        self.data.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data.chmod(0o700)
        fd = os.open(self.data / "fleet-up.lock", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # private like everything in the data dir (also when it existed)
        handle = os.fdopen(fd, "a+")
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
        admin = self.settings
        secrets = self.settings.secrets_path.resolve()
        if not nats_url or Authority.exists(secrets):
            # embedded NATS, or an external one that trusts our operator (`fleet creds server-config`)
            self.authority = Authority.load_or_create(secrets)
            self.admin_creds = self._issue_identities()
            admin = msgspec.structs.replace(self.settings, nats_creds=self.admin_creds)
        if not nats_url and self.cluster_size:
            self.cluster = EmbeddedNatsCluster(self.data / "nats-cluster", self.cluster_size,
                                               ports=_ports_from(self.data / "nats-cluster.ports"),
                                               authority=self.authority, creds=admin.nats_creds)
            await self.cluster.start()
            write_private(self.data / "nats-cluster.ports", msgspec.json.encode(self.cluster.ports()))
            nats_url = self.cluster.url
            admin = msgspec.structs.replace(admin, nats_tls_ca=self.cluster.tls_ca)  # TLS, as deploy/nats has it
            for index, node in enumerate(self.cluster.nodes):
                self.watch(node.name, node, functools.partial(self.cluster.start_node, index))
        if not nats_url:
            self.nats = await EmbeddedNats(self.data / "nats", port=_port_from(self.data / "nats.port"),
                                           authority=self.authority).start()
            write_private(self.data / "nats.port", str(self.nats.port).encode())
            nats_url = self.nats.url
            self.watch("nats", self.nats, self.nats.start)
        database_url = self.settings.database_url
        passfile = self.settings.database_passfile or os.environ.get("PGPASSFILE")
        reader_url = self.settings.api_database_url
        if not database_url:
            self.postgres = await EmbeddedPostgres(self.data / "postgres",
                                                   port=_port_from(self.data / "postgres.port")).start()
            write_private(self.data / "postgres.port", str(self.postgres.port).encode())
            self.watch("postgres", self.postgres, self.postgres.start)
            passfile = str(secrets_dir(self.data) / "pgpass")
            database_url, reader_url = await ensure_roles(self.postgres.dsn(), "fleet", Path(passfile))
        elif not reader_url:
            log.warning("FLEET_API_DATABASE_URL is not set: the API reads with the projections' role "
                        "(see docs/security.md, \"PostgreSQL: least privilege\", for the read-only role to create)")
        # Only the parts that use PostgreSQL are told where it is, each with its own role.
        self.part_env = {"projections": {"FLEET_DATABASE_URL": database_url},
                         "api": {"FLEET_DATABASE_URL": reader_url or database_url}}
        if passfile:
            for extra in self.part_env.values():
                extra["PGPASSFILE"] = passfile
        api_url = self.settings.api_url or f"http://127.0.0.1:{self.api_port or free_port()}"
        admin = msgspec.structs.replace(admin, nats_url=nats_url)
        nc = await connect_nats(admin, "up")
        await ensure_all(nc, self.settings)  # created by admin only: services merely check them
        self.token_file = await bootstrap_admin_token(nc, self.data, format_time(utcnow()))
        await nc.close()
        if self.authority is None:  # no account keys here: nobody to do the identity duties
            self.part_names = tuple(p for p in self.part_names if p != "authority")
        checker = await connect_nats(admin, "up-duties")
        self._duty_conns.append(checker)
        self._duties.append(asyncio.create_task(self._check_duties(checker), name="duty-check"))
        self.env = {**os.environ, "FLEET_NATS_URL": nats_url, "FLEET_API_URL": api_url,
                    "FLEET_DATA_DIR": str(self.data)}
        if admin.nats_tls_ca:
            self.env["FLEET_NATS_TLS_CA"] = admin.nats_tls_ca
        for name in ("FLEET_DATABASE_URL", "FLEET_API_DATABASE_URL", "FLEET_API_TOKEN", "PGPASSFILE"):
            self.env.pop(name, None)
        for name in ("heartbeat_interval", "offline_after", "drift_grace", "reconcile_backoff",
                     "reconcile_max_tries", "replicas", "lease_ttl", "lease_renew", "duty_bound"):
            self.env[f"FLEET_{name.upper()}"] = str(getattr(self.settings, name))
        parts = [_Part(PartStatus(name), service=name) for name in self.part_names]
        if self.cluster_size:  # the second instance of every part (on the local or an external cluster)
            parts += [_Part(PartStatus(f"{name}-2", instance=2), service=name,
                            env={"FLEET_API_URL": f"http://127.0.0.1:{free_port()}"} if name == "api" else {})
                      for name in self.part_names]
        self._assign_metrics(parts, api_url)
        write_endpoints(self.data, Endpoints(nats_url=nats_url, nats_tls_ca=admin.nats_tls_ca,
                                             database_url=_without_password(database_url), api_url=api_url,
                                             database_passfile=passfile, pid=os.getpid(),
                                             metrics={**{p.status.name: p.status.metrics_url for p in parts
                                                         if p.status.metrics_url},
                                                      **({"up": self.metrics_url} if self.metrics_url else {})}))
        self.status = UpStatus(pid=os.getpid(), started_at=format_time(utcnow()), nats_url=nats_url,
                               api_url=api_url, database_embedded=self.postgres is not None,
                               metrics_url=self.metrics_url)
        private_dir(self.log_dir)
        for part in parts:
            self.parts[part.status.name] = part
            part.task = asyncio.create_task(self._supervise(part))
        return self.status

    def _assign_metrics(self, parts: list[_Part], api_url: str) -> None:
        """Give each part a metrics port of its own (kept across runs, in metrics.ports); the API's
        metrics are its own /metrics, with the fleet's gauges."""
        path = self.data / "metrics.ports"
        try:
            last = msgspec.json.decode(path.read_bytes(), type=dict[str, int])
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            last = {}
        ports: dict[str, int] = {}
        for part in parts:
            if part.service == "api":
                part.env["FLEET_METRICS_PORT"] = "0"
                part.status.metrics_url = f"{part.env.get('FLEET_API_URL', api_url)}/metrics"
                continue
            port = ports[part.status.name] = _bindable(last.get(part.status.name)) or free_port()
            part.env["FLEET_METRICS_PORT"] = str(port)
            part.status.metrics_url = f"http://127.0.0.1:{port}/metrics"
        if self.serve_metrics:  # the supervisor's own process (the identity duties are the authority part's)
            metrics.PART.labels(part="up").set(1)
            port = ports["up"] = metrics.serve("up", _bindable(last.get("up")) or 0)
            self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        write_private(path, msgspec.json.encode(ports))

    def watch(self, name: str, runs: _Runs, restart: Callable[[], Awaitable[object]]) -> None:
        """Supervise a started embedded server: `restart` starts it again after it died."""
        pid = runs.proc.pid if runs.proc else None
        server = _Server(PartStatus(name, pid=pid, state="running", up_since=format_time(utcnow())), runs, restart)
        self.servers.append(server)
        self._duties.append(asyncio.create_task(self._supervise_server(server), name=f"watch-{name}"))

    async def _supervise_server(self, server: _Server) -> None:
        """Notice the death of an embedded server (reaping it: no zombie) and start it again on
        the same port and data, with the parts' backoff, until it runs or `fleet up` stops."""
        failures = 0
        try:
            while not self.stopping.is_set():
                proc = server.runs.proc
                code = proc.poll() if proc is not None else None
                if code is None:
                    await wait_set(self.stopping, 0.5)
                    continue
                failures, delay = _backoff(failures, server.ran_since)
                server.status.last_exit, server.status.pid, server.status.state = code, None, "restarting"
                server.status.restarts += 1
                log.warning("%s exited with %s; restart #%d in %.1fs", server.status.name, code,
                            server.status.restarts, delay)
                if not await wait_set(self.stopping, delay):
                    await self._restart_server(server)
        finally:
            server.status.state = "stopped"

    async def _restart_server(self, server: _Server) -> None:
        server.ran_since = time.monotonic()
        try:
            await server.restart()
        except Exception:  # not up (a port still held, old backends exiting): the next round retries
            log.exception("%s did not start again", server.status.name)
            await asyncio.to_thread(_end, server.runs.proc)  # a half-started one would never be retried
            return
        proc = server.runs.proc
        server.status.pid = proc.pid if proc is not None else None
        server.status.state, server.status.up_since = "running", format_time(utcnow())
        log.warning("%s is running again (pid %s)", server.status.name, server.status.pid)

    async def _check_duties(self, nc: NATS, every: float = 2.0) -> None:
        """Alive means working: every `every` seconds ask each part for its duties
        (`$SRV.DUTIES`), show what stalled in status.json, and restart a part that answers with
        a stalled duty or has stopped answering. Judged only while this checker's own connection
        is up (and has been for a full bound): a NATS outage is nobody's stall."""
        bound = self.settings.duty_bound
        connected_since: float | None = None
        while not await wait_set(self.stopping, every):
            if not nc.is_connected:
                connected_since = None
                continue
            connected_since = connected_since or time.monotonic()
            try:
                reports = await gather_reports(nc, wait=0.5)
            except Exception as exc:  # the link dropped while asking: ask again next round
                log.debug("duty check: %r", exc)
                continue
            by_slot = {report.instance: report for report in reports}
            now = time.monotonic()
            for part in self.parts.values():
                if part.status.state != "running" or part.proc is None or part.proc.returncode is not None:
                    continue
                report = by_slot.get(self.slot(part.status.name))
                if report is not None:
                    part.answered = now
                    part.status.answered_at = report.at
                # A part still starting (imports, connections, migrations on a busy machine) has
                # until its first answer at least START_GRACE; then the duty bound.
                limit = bound if part.answered > part.ran_since else max(bound, START_GRACE)
                verdict = judge(report, quiet_for=now - max(part.ran_since, part.answered, connected_since),
                                bound=limit, last_answer=part.status.answered_at or part.status.up_since)
                part.status.stalled, part.status.stalled_since = verdict.stalled, verdict.since
                # After an outage every part's duties look stalled for a moment (nobody could work):
                # shown at once, acted on only once this checker has been connected a full bound.
                if verdict.restart and now - connected_since >= bound:
                    self._restart_stalled(part, verdict)

    def _restart_stalled(self, part: _Part, verdict: Verdict) -> None:
        """End a part that runs but does not work; `_supervise` starts it again."""
        proc = part.proc
        if proc is None or proc.returncode is not None:
            return
        reason = f"{verdict.stalled} stalled since {verdict.since}"
        part.status.restarted_for = reason
        log.warning("part %s: %s; restarting it", part.status.name, reason)
        proc.terminate()

        async def kill_if_stuck() -> None:  # a part hung for good does not stop on SIGTERM
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
                return
            if proc.returncode is None:
                proc.kill()

        self._duties.append(asyncio.create_task(kill_if_stuck(), name=f"kill-{part.status.name}"))

    def _issue_identities(self) -> str:
        """Credentials for each part, the CLI's admin and operator, and the revoker's system
        user, all under secrets/ (0600); returns the admin's."""
        assert self.authority is not None
        secrets = self.authority.directory
        write = self.authority.write_creds
        for part in self.part_names:
            # a new service part is `service:<name>` (one line in shared.auth.roles.SERVICES)
            role = PART_ROLES.get(part, f"service:{part}")
            self.creds[part] = str(write(secrets / f"{part}.creds", self.authority.issue(role, part)))
        write(secrets / OPERATOR_CREDS, self.authority.issue("operator", local_user()))
        write(secrets / "system.creds", self.authority.issue("sys", "revoker"))
        return str(write(secrets / ADMIN_CREDS, self.authority.issue("admin", "admin")))

    async def _supervise(self, part: _Part) -> None:
        failures = 0
        while not self.stopping.is_set():
            logfile = open_log(self.log_dir / f"{part.status.name}.log")
            env = dict(self.env)
            service = part.service or part.status.name
            if service in self.creds:  # every instance of a part runs under the part's identity
                env["FLEET_NATS_CREDS"] = self.creds[service]
            # The slot's name, the same across its restarts: a part restarted after kill -9 takes
            # back the leases its dead run held at once (shared.lease.instance_name). Unique: the
            # data dir's lock allows one `fleet up` per data dir, and it restarts a part only
            # after the part's process has exited.
            env["FLEET_INSTANCE"] = self.slot(part.status.name)
            part.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fleet", "service", service,
                env={**env, **part.env, **self.part_env.get(service, _NO_DATABASE)},
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
            failures, delay = _backoff(failures, part.ran_since)
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
        self.status.servers = [s.status for s in self.servers]
        write_private(self.data / STATUS_FILE, msgspec.json.encode(self.status))

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
        for duty in self._duties:
            duty.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await duty
        for conn in self._duty_conns:
            with contextlib.suppress(Exception):
                await conn.close()
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
        self.write_status()  # every part and server stopped
        if self._lock is not None:  # only the holder of the data dir cleans it up
            (self.data / "endpoints.json").unlink(missing_ok=True)
            self._lock.close()
            self._lock = None


def _end(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill a process if it still runs, and reap it."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def _without_password(url: str) -> str:
    """endpoints.json never holds a secret: a password in an external URL stays in the env."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))


def local_user() -> str:
    """The CLI's operator identity is named after the local user (a valid id)."""
    import getpass
    import re

    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "operator"
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)[:64].lstrip("-_") or "operator"


def _port_from(path: Path) -> int | None:
    """Reuse the port of the last run so clients that cached it keep working."""
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return _bindable(port)


def _bindable(port: int | None) -> int | None:
    """`port` when nothing listens on it, else None."""
    with contextlib.suppress(OSError), socket.socket() as sock:
        # as nats-server and PostgreSQL bind: connections of the last run in TIME-WAIT do not
        # hold the port; only a listener does
        if port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
