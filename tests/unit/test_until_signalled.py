"""A process told to stop stops, even when winding down hangs (its NATS gone with a dead `fleet
up`): after the grace period it exits by itself, since nobody may be left to kill it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

STUCK = textwrap.dedent("""
    import asyncio, sys
    import fleet.cli.common as common

    common.STOP_GRACE = float(sys.argv[1])

    async def work() -> None:
        print("ready", flush=True)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.Event().wait()  # winding down never ends (e.g. a drain that cannot reach NATS)

    asyncio.run(common.until_signalled(work()))
""")


def _stopped_after(grace: float) -> tuple[int | None, float]:
    proc = subprocess.Popen([sys.executable, "-c", STUCK, str(grace)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace + 10), time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_a_hung_shutdown_ends_after_the_grace_period() -> None:
    code, took = _stopped_after(0.5)
    assert code == 1
    assert took >= 0.5
