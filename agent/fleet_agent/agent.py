"""`fleet-agent` (and `fleet agent`): the agent of one real device (DESIGN §5).

It reads the device's desired state (direct get on its own key), then follows
`$KV.fleet_desired.<device>` with a plain core subscription, and reads the key again after every
reconnect. A new value is written to `<state-dir>/config.json` atomically (temporary file, fsync,
rename, fsync of the directory), then `--apply-cmd` runs. Every interval it checks the file on
disk against what it was told to run and re-applies when someone edited it, runs `--health-cmd`
(exit 0 ok, 1 degraded, anything else failed; stdout `name=value` lines are metrics) and sends a
heartbeat carrying the hash of the config *actually on disk*.

While NATS is away it keeps the last good config, keeps checking the disk, and sends nothing
(stale heartbeats are worthless, so none are buffered). `seq` starts from the wall clock in
milliseconds so that it keeps increasing across agent restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult, urlparse

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.client import Server
from nats.aio.msg import Msg

from fleet_agent import AGENT_VERSION
from fleet_agent.backoff import Backoff, cap_for
from fleet_agent.confighash import NotCanonicalizable, canonical_bytes, config_hash
from fleet_agent.contract import (
    DESIRED_DECODER,
    DESIRED_ENCODER,
    HEARTBEAT_ENCODER,
    ID_RE,
    DesiredState,
    Heartbeat,
    decode_desired,
    desired_key_subject,
    device_inbox,
    heartbeat_subject,
)
from fleet_agent.credentials import lifetime_of_creds, renew, renew_at
from fleet_agent.desired import DesiredUnreachable, read_desired
from fleet_agent.files import write_atomically

log = logging.getLogger(__name__)
DEFAULT_URL = "nats://127.0.0.1:4222"
CONFIG_FILE = "config.json"
DESIRED_FILE = "desired.json"


class BadOption(ValueError):
    """An agent option is wrong; `field` names it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def where(url: str | ParseResult | None) -> str | None:
    """`host:port` of a server URL, without the user or password it may carry (never logged)."""
    if url is None:
        return None
    parsed = urlparse(url) if isinstance(url, str) else url
    return f"{parsed.hostname}:{parsed.port}" if parsed.port else parsed.hostname


def parse_servers(text: str | None) -> list[str]:
    """`FLEET_NATS_URL` as a list: one URL, or several separated by commas (a cluster's nodes)."""
    servers = [url.strip() for url in (text or "").split(",") if url.strip()]
    return servers or [DEFAULT_URL]


@dataclass(frozen=True)
class AgentOptions:
    """What `fleet agent` is told on its command line."""

    device_id: str
    site_id: str
    state_dir: Path
    apply_cmd: str | None = None
    health_cmd: str | None = None
    interval: float = 10.0
    command_timeout: float = 60.0
    servers: tuple[str, ...] = (DEFAULT_URL,)  # every node of the cluster
    creds: Path | None = None  # the device's NATS credentials file (renewals are written into it)
    tls_ca: Path | None = None
    backoff_initial: float = 0.5  # reconnect waits: full jitter over [0, initial * 2**n], at most backoff_cap
    backoff_cap: float | None = None  # None: cap_for(interval)

    def __post_init__(self) -> None:
        for value, name in ((self.device_id, "device"), (self.site_id, "site")):
            if not ID_RE.fullmatch(value):
                raise BadOption(f"{value!r} is not a valid id: use 1-128 characters from A-Z a-z 0-9 _ -, "
                                "starting with a letter or digit", field=name)
        if self.interval <= 0:
            raise BadOption("the interval must be positive", field="interval")
        if not self.servers:
            raise BadOption("at least one NATS server URL is needed", field="servers")
        if self.backoff_initial <= 0 or (self.backoff_cap is not None and self.backoff_cap <= 0):
            raise BadOption("backoff: the initial window and the cap must be positive", field="backoff")


def disk_hash(path: Path) -> str | None:
    """config_hash of the config on disk; a file that is not JSON hashes its raw bytes (so it
    never matches a desired hash); None when there is no file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return config_hash(msgspec.json.decode(raw))
    except (msgspec.DecodeError, TypeError, NotCanonicalizable):
        return "unparseable-" + hashlib.sha256(raw).hexdigest()


def _now_text() -> str:
    """Now, as the contract writes times: RFC 3339, UTC, microseconds, `Z` suffix."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _hash_or_none(config: dict[str, Any]) -> str | None:
    try:
        return config_hash(config)
    except NotCanonicalizable:
        return None


def _file_bytes(config: dict[str, Any]) -> bytes:
    try:
        return canonical_bytes(config)
    except NotCanonicalizable:  # not JCS-writable (an integer beyond 2**53): write it as it came
        return msgspec.json.encode(config, order="sorted")


def parse_metrics(text: str) -> dict[str, float]:
    """`name=value` lines to metrics; other lines are ignored."""
    metrics: dict[str, float] = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if not sep or not name:
            continue
        with contextlib.suppress(ValueError):
            metrics[name.strip()] = float(value)
    return metrics


class Agent:
    """One device's agent; `run()` until cancelled."""

    def __init__(self, options: AgentOptions, rng: random.Random | None = None) -> None:
        self.options = options
        cap = options.backoff_cap or cap_for(options.interval)
        self.backoff = Backoff(min(options.backoff_initial, cap), cap, rng or random.Random())
        self.reconnects = 0
        self._lost: str | None = None  # host:port of the server last connected to
        self.config_path = options.state_dir / CONFIG_FILE
        self.desired_path = options.state_dir / DESIRED_FILE
        self.applied: DesiredState | None = None  # the desired state last written to disk
        self.apply_ok = True
        self.health = "ok"
        self.metrics: dict[str, float] = {}
        self.seq = int(time.time() * 1000)
        self.heartbeats_sent = 0
        self.applies = 0
        self.repairs = 0
        self.nc: NATS | None = None
        self._latest: DesiredState | None = None
        self._wake = asyncio.Event()
        self._refresh = asyncio.Event()
        self._lock = asyncio.Lock()

    # --- life cycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled."""
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.options.state_dir.glob(".*.tmp"):  # left by a crash mid-write
            stale.unlink(missing_ok=True)
        self.applied = self._load_applied()
        tasks = [asyncio.create_task(self._apply_loop(), name="agent-apply")]
        try:
            await self._connect()
            tasks.append(asyncio.create_task(self._refresh_loop(), name="agent-refresh"))
            tasks.append(asyncio.create_task(self._renew_loop(), name="agent-renew"))
            self._refresh.set()
            while True:
                await self.check_once()
                await asyncio.sleep(self.options.interval)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.nc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.nc.close(), 5.0)

    async def _connect(self) -> None:
        """Connect, retrying for ever with jittered exponential backoff: a device waits for its
        control plane, and a fleet does not come back in lock-step."""
        while True:
            nc = NATS()
            try:
                await nc.connect(**self._connect_options())
                break
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                wait = self.backoff.next_wait()
                log.warning("NATS not reachable (%r); keeping the last good config, next try in %.1f s", exc, wait)
                await self.check_local()
                await asyncio.sleep(wait)
        # The first connection gave up after one round over the servers (so that the wait between
        # rounds is ours); once connected, the connection reconnects for ever.
        nc.options["max_reconnect_attempts"] = -1
        self.backoff.reset()
        self.nc = nc
        self._lost = where(nc.connected_url)
        log.info("connected to %s", self._lost)
        await nc.subscribe(desired_key_subject(self.options.device_id), cb=self._on_value)

    def _connect_options(self) -> dict[str, Any]:
        async def reconnected() -> None:
            self.backoff.reset()
            self.reconnects += 1
            self._lost = url = where(self.nc.connected_url) if self.nc else None
            log.info("reconnected to %s; reading desired state again", url)
            self._refresh.set()

        async def disconnected() -> None:
            log.warning("disconnected from NATS (%s); reconnecting", self._lost)

        async def quiet(exc: Exception) -> None:
            log.debug("nats: %r", exc)

        options: dict[str, Any] = {
            "servers": list(self.options.servers), "name": f"fleet-agent-{self.options.device_id}",
            "allow_reconnect": True, "max_reconnect_attempts": 1, "reconnect_time_wait": 0,
            "connect_timeout": 2, "reconnected_cb": reconnected, "disconnected_cb": disconnected,
            "error_cb": quiet, "reconnect_to_server_handler": self._next_server,
            "pending_size": 256 * 1024,
            # A device may read only its own inbox (DESIGN §11: part of the wire contract).
            "inbox_prefix": device_inbox(self.options.device_id),
        }
        if self.options.creds is not None:
            options["user_credentials"] = str(self.options.creds)
        if self.options.tls_ca is not None:
            options["tls"] = ssl.create_default_context(cafile=str(self.options.tls_ca))
        return options

    def _next_server(self, servers: list[Server], info: dict[str, Any]) -> tuple[Server | None, float]:
        """nats-py's reconnect hook: the servers in turn, the one just lost last (it is the least
        likely to be back), each after a jittered wait."""
        if not servers:
            return None, self.backoff.next_wait()
        order = sorted(servers, key=lambda s: where(s.uri) == self._lost)
        return order[self.backoff.attempt % len(order)], self.backoff.next_wait()

    async def _renew_loop(self) -> None:
        """With expiring credentials, renew them when two thirds of their life has passed
        (fleet_agent.credentials); on a failure try again a little later, until they expire."""
        if self.options.creds is None:
            return
        creds = self.options.creds
        claims = lifetime_of_creds(creds)
        while (when := renew_at(claims)) is not None and self.nc is not None:
            await asyncio.sleep(max(0.0, when - time.time()))
            try:
                renewed = await renew(self.nc, self.options.device_id, creds)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("credential renewal failed (%r); retrying", exc)
                await asyncio.sleep(min(self.options.interval, max(0.1, (claims.exp or 0) - time.time()) / 4))
                continue
            if renewed is None:  # refused: revoked; nothing more to do
                return
            claims = renewed
            log.info("credentials renewed until %s", claims.exp)
            # nats-py closes (does not reconnect) a connection whose JWT expires: open a new one
            # under the renewed file now, then let the old one go.
            old = self.nc
            await self._connect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.close(), 5.0)
            self._refresh.set()

    async def _on_value(self, msg: Msg) -> None:
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            return
        value = decode_desired(msg.data)
        if value is None or value.device_id != self.options.device_id:
            log.warning("agent: ignoring a desired-state value that is not for this device")
            return
        self._offer(value)

    def _offer(self, value: DesiredState) -> None:
        if value != self.applied:
            self._latest = value
            self._wake.set()

    async def _refresh_loop(self) -> None:
        while True:
            await self._refresh.wait()
            self._refresh.clear()
            assert self.nc is not None
            try:
                value = await read_desired(self.nc, self.options.device_id)
            except DesiredUnreachable as exc:
                log.warning("agent: could not read desired state (%s); will retry", exc)
                await asyncio.sleep(1.0)
                self._refresh.set()
                continue
            if value is not None:
                self._offer(value)

    async def _apply_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            value, self._latest = self._latest, None
            if value is None or value == self.applied:
                continue
            await self.apply(value)
            await self.heartbeat()  # report the change at once rather than at the next interval

    # --- applying ---------------------------------------------------------------------------------

    async def apply(self, value: DesiredState) -> None:
        """Write the effective config atomically, record it, run the apply command."""
        async with self._lock:
            await asyncio.to_thread(self._write, value)
            self.applied = value
            self.applies += 1
            self.apply_ok = await self._run_apply(value)
            log.info("applied %s (revision %d)%s", value.snapshot_id,
                     value.revision, "" if self.apply_ok else " but the apply command failed")

    def _write(self, value: DesiredState) -> None:
        if _hash_or_none(value.config) != value.config_hash:
            log.warning("desired config_hash %s does not match its config; writing the config", value.config_hash)
        # The file is the canonical form (pretty-printed): what the apply command reads, and what
        # the reported hash is computed from.
        write_atomically(self.config_path, msgspec.json.format(_file_bytes(value.config), indent=2))
        write_atomically(self.desired_path, DESIRED_ENCODER.encode(value))

    def _load_applied(self) -> DesiredState | None:
        try:
            return DESIRED_DECODER.decode(self.desired_path.read_bytes())
        except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def _run_apply(self, value: DesiredState) -> bool:
        if not self.options.apply_cmd:
            return True
        code, _ = await self._shell(self.options.apply_cmd, value)
        return code == 0

    async def _shell(self, command: str, value: DesiredState | None) -> tuple[int, str]:
        env = {**os.environ, "FLEET_DEVICE_ID": self.options.device_id, "FLEET_SITE_ID": self.options.site_id,
               "FLEET_CONFIG": str(self.config_path)}
        if value is not None:
            env["FLEET_SNAPSHOT_ID"] = value.snapshot_id
        try:
            proc = await asyncio.create_subprocess_shell(
                command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env)
        except OSError as exc:
            log.warning("agent: cannot run %r: %s", command, exc)
            return 127, ""
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.options.command_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return 124, ""
        return proc.returncode or 0, out.decode(errors="replace")

    # --- every interval ---------------------------------------------------------------------------

    async def check_local(self) -> bool:
        """Re-apply when the config on disk is not what was applied; True if it repaired."""
        applied = self.applied
        if applied is None:
            return False
        if disk_hash(self.config_path) == _hash_or_none(applied.config):
            if not self.apply_ok:  # a failed apply is retried every interval
                async with self._lock:
                    self.apply_ok = await self._run_apply(applied)
            return False
        log.warning("config on disk was changed locally; re-applying %s", applied.snapshot_id)
        self.repairs += 1
        await self.apply(applied)
        return True

    async def check_once(self) -> None:
        """One interval's work: local drift, health, heartbeat."""
        await self.check_local()
        await self._check_health()
        await self.heartbeat()

    async def _check_health(self) -> None:
        if not self.options.health_cmd:
            self.health = "ok" if self.apply_ok else "failed"
            return
        code, out = await self._shell(self.options.health_cmd, self.applied)
        self.metrics = parse_metrics(out)
        health = {0: "ok", 1: "degraded"}.get(code, "failed")
        self.health = health if self.apply_ok else "failed"

    def heartbeat_body(self) -> Heartbeat:
        """The heartbeat as of now: the hash is of the file on disk, not of what was sent."""
        self.seq += 1
        applied = self.applied
        on_disk = disk_hash(self.config_path) if applied is not None else None
        return Heartbeat(
            device_id=self.options.device_id, site=self.options.site_id, seq=self.seq,
            at=_now_text(), snapshot_id=applied.snapshot_id if applied else None,
            config_hash=on_disk, health=self.health,  # type: ignore[arg-type]  # a HEALTH value; the field is a Literal
            metrics=self.metrics, agent_version=AGENT_VERSION)

    async def heartbeat(self) -> None:
        """Publish a heartbeat if connected (nothing is queued while NATS is away)."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            return
        body = HEARTBEAT_ENCODER.encode(self.heartbeat_body())
        try:
            await nc.publish(heartbeat_subject(self.options.site_id, self.options.device_id), body)
            await nc.flush(timeout=2)
            self.heartbeats_sent += 1
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("agent: heartbeat not sent: %r", exc)
