"""Every duty of `fleet up` runs without it (DESIGN §15, docs/operations.md): the parts started the
way systemd or Kubernetes starts them — separate `fleet service NAME` processes, their settings
from deploy/env/fleet-services.env.example, each with its own identity and data dir, after
`fleet init` with an admin identity — against the 3-node cluster of deploy/nats/ with TLS. A
device enrolled with expiring credentials is renewed; retiring it cuts it off within seconds; and
killing the authority part's lease holder hands the identity duties to the other instance.

Run by `make test-cluster` (a minute or two)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from fleet_agent.contract import device_inbox
from fleet_agent.credentials import jwt_of_creds, lifetime_of, renew
from nats.aio.client import Client as NATS

from shared.auth.authority import DUTY_FILES, Authority, inbox_of_creds
from shared.commands import CommandClient
from shared.embedded_cluster import EmbeddedNatsCluster
from shared.lease import holder_of
from tests.e2e.test_cluster_failover import KILLED_CONNECTIONS, retrying

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(600), *KILLED_CONNECTIONS]

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / "deploy" / "env" / "fleet-services.env.example"
# What the authority part is handed (deploy/systemd/fleet@authority.service.d, the Kubernetes part):
# only the keys its duties need, never the operator's own or any account's
AUTHORITY_FILES = (*DUTY_FILES, "system.creds")
CUT_OFF_WITHIN = 15.0  # seconds from a retirement to the device refused: "within seconds"


def env_example() -> dict[str, str]:
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def fleet_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


class Part:
    """One `fleet service NAME` process, as a unit or a pod runs it."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name, self.env, self.log = name, env, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fleet", "service", self.name, env=self.env, stdout=out, stderr=out)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 30)
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


async def retired_and_cut_off(client: CommandClient, creds: Path, device: str,
                              cluster: EmbeddedNatsCluster) -> float:
    """Retire a connected device; seconds until the server closed its connection (a new one is
    then refused)."""
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    nc = await nats.connect(cluster.urls, tls=cluster.tls_context(), user_credentials=str(creds),
                            inbox_prefix=device_inbox(device).encode(), max_reconnect_attempts=2,
                            reconnect_time_wait=0.2, closed_cb=on_closed)
    try:
        started = time.monotonic()
        await retrying(client, "registry", "retire_device", {"device_id": device})
        await asyncio.wait_for(closed.wait(), CUT_OFF_WITHIN)
        took = time.monotonic() - started
    finally:
        await nc.close()
    with pytest.raises(nats.errors.Error, match=r"Authorization Violation|no servers"):  # refused
        await nats.connect(cluster.urls, tls=cluster.tls_context(), user_credentials=str(creds),
                           allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0)
    return took


@contextlib.asynccontextmanager
async def deployment(tmp: Path) -> AsyncIterator[tuple[EmbeddedNatsCluster, Authority, dict[str, Part], NATS, Path]]:
    """The keys made on a 'workstation', the cluster, `fleet init`, and the parts as processes."""
    workstation = tmp / "workstation"
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    cli_env = {**base, "FLEET_DATA_DIR": str(workstation)}
    assert fleet_cli("creds", "server-config", env=cli_env).returncode == 0  # makes the keys
    authority = Authority.load_or_create(workstation / "secrets")
    issued = tmp / "issued"
    issued.mkdir()

    def create(role: str, name: str) -> Path:
        out = issued / f"{name}.creds"
        done = fleet_cli("creds", "create", "--role", role, "--name", name, "--out", str(out), env=cli_env)
        assert done.returncode == 0, done.stderr
        return out

    admin = create("admin", "setup")
    cluster = EmbeddedNatsCluster(tmp / "nats", authority=authority, creds=str(admin))
    parts: dict[str, Part] = {}
    nc: NATS | None = None
    try:
        await cluster.start()
        shared = {**base, **env_example(), "FLEET_NATS_URL": cluster.url, "FLEET_NATS_TLS_CA": cluster.tls_ca,
                  "FLEET_LEASE_TTL": "2s"}
        init = fleet_cli("init", "--json", env={**shared, "FLEET_NATS_CREDS": str(admin),
                                                "FLEET_DATA_DIR": str(tmp / "init")})
        assert init.returncode == 0, init.stdout + init.stderr
        system = create("sys", "revoker")
        identities = {service: create(f"service:{service}", service) for service in ("registry", "authority")}
        for name, service in (("registry", "registry"), ("authority-a", "authority"), ("authority-b", "authority")):
            data = tmp / "parts" / name
            (data / "secrets").mkdir(parents=True, mode=0o700)
            if service == "authority":  # laid out as the unit's ExecStartPre / the pod's mounts lay them
                for file in AUTHORITY_FILES:
                    source = system if file == "system.creds" else workstation / "secrets" / file
                    shutil.copy(source, data / "secrets" / file)
                    (data / "secrets" / file).chmod(0o600)
            env = {**shared, "FLEET_NATS_CREDS": str(identities[service]), "FLEET_DATA_DIR": str(data),
                   "FLEET_INSTANCE": name}
            parts[name] = Part(service, env, tmp / f"{name}.log")
            await parts[name].start()
        operator = create("operator", "alice")
        nc = await cluster.connect(user_credentials=str(operator), max_reconnect_attempts=-1,
                                   reconnect_time_wait=0.1,
                                   inbox_prefix=(inbox_of_creds(operator) or "_INBOX").encode())
        yield cluster, authority, parts, nc, admin
    finally:
        if nc is not None:
            await nc.close()
        for part in parts.values():
            await part.stop()
        cluster.stop()


async def test_the_identity_duties_run_as_a_part_of_their_own(tmp_path: Path) -> None:
    async with deployment(tmp_path) as (cluster, authority, parts, nc, admin):
        client = CommandClient(nc, actor="operator:alice", timeout=10)
        await client.wait_ready("registry", "authority", timeout=120)
        await retrying(client, "registry", "add_site", {"site_id": "s1"})
        devices = tmp_path / "devices"
        devices.mkdir()
        creds: dict[str, Path] = {}
        for device in ("d1", "d2"):
            await retrying(client, "registry", "add_device", {"device_id": device, "site_id": "s1"})
            creds[device] = devices / f"{device}.creds"
            creds[device].write_text(authority.issue_device(device, expires_in=600))  # `fleet device enroll --expires`
            creds[device].chmod(0o600)

        # renewed: the device asks on its own subject, gets a JWT that lives longer, usable at once
        first = jwt_of_creds(creds["d1"].read_text())
        device_nc = await nats.connect(cluster.urls, tls=cluster.tls_context(), user_credentials=str(creds["d1"]),
                                       inbox_prefix=device_inbox("d1").encode())
        try:
            renewed = await renew(device_nc, "d1", creds["d1"])
        finally:
            await device_nc.close()
        assert renewed is not None and renewed.exp is not None
        assert jwt_of_creds(creds["d1"].read_text()) != first
        assert renewed.exp > (lifetime_of(first).exp or 0)
        for part in ("authority-a", "authority-b"):  # it did so without the operator's or accounts' own keys
            assert not list((tmp_path / "parts" / part / "secrets").glob("[!d]*.nk")), part
            assert not (tmp_path / "parts" / part / "secrets" / "operator.nk").exists()

        # retired: cut off within seconds, on its renewed credentials
        admin_nc = await cluster.connect(user_credentials=str(admin))
        try:
            holder = await holder_of(admin_nc, "authority")
            assert holder is not None, "no authority instance holds the duties"
            assert await retired_and_cut_off(client, creds["d1"], "d1", cluster) < CUT_OFF_WITHIN

            # the holder of the duties is killed: the other instance takes them over
            killed = next(name for name in parts if name in holder)
            await parts[killed].stop(signal.SIGKILL)
            deadline = time.monotonic() + 30
            while (now := await holder_of(admin_nc, "authority")) in (None, holder):
                assert time.monotonic() < deadline, "the standby never took the authority lease"
                await asyncio.sleep(0.2)
            assert now is not None and killed not in now
            assert await retired_and_cut_off(client, creds["d2"], "d2", cluster) < CUT_OFF_WITHIN
        finally:
            await admin_nc.close()
