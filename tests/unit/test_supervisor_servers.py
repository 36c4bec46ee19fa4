"""How `fleet up` supervises an embedded server (fleet.supervisor.Supervisor.watch), with a
stand-in process instead of nats-server: a death is reaped and counted, the server is started
again with backoff, and a restart that fails half-way (started, never ready) is ended and tried
again rather than left as a process nobody watches. The real servers: tests/e2e/test_up_servers.py."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

from fleet.supervisor import Supervisor
from shared.config import load_settings
from shared.errors import Unavailable


class StandIn:
    """Starts `sleep`; its second start (the first restart) comes up but never gets ready."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.started: list[subprocess.Popen[bytes]] = []

    async def start(self) -> None:
        self.proc = subprocess.Popen(["sleep", "60"])  # noqa: ASYNC220 - a daemon child, as the servers are
        self.started.append(self.proc)
        if len(self.started) == 2:
            raise Unavailable("did not accept connections in time")


async def test_a_dead_server_is_restarted_and_a_half_started_one_is_ended(tmp_path: Path) -> None:
    supervisor = Supervisor(load_settings({"data_dir": str(tmp_path)}, env={}))
    server = StandIn()
    await server.start()
    supervisor.watch("stand-in", server, server.start)
    status = supervisor.servers[0].status
    try:
        assert (status.state, status.pid) == ("running", server.started[0].pid)
        server.started[0].send_signal(signal.SIGKILL)
        async with asyncio.timeout(30):
            while not (len(server.started) == 3 and status.state == "running"):
                await asyncio.sleep(0.05)
        first, half, third = server.started
        assert first.returncode == -signal.SIGKILL  # reaped by the supervisor: no zombie
        assert half.returncode == -signal.SIGKILL  # the half-started one was ended, not left running
        assert third.poll() is None and status.pid == third.pid
        assert status.restarts == 2 and status.last_exit == -signal.SIGKILL
    finally:
        await supervisor.stop()
        for proc in server.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert status.state == "stopped"
