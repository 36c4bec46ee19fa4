"""Lease renewals during a big commit (issue #26): how stale a lease gets while its part commits
a wave's worth of events, renewed on the part's own loop and connection (as before) and in a
thread of its own (shared.lease_thread, as now).

    .venv/bin/python -m benchmarks.lease_renewal [--events 100000] [--ttl 6]

An embedded nats-server; two leases held by this process, one of each kind; then the part's loop
appends `--events` events in atomic batches of 1,000 (eight in flight, as the rollout's pipeline
does) and folds them (a CPU-bound pass, as the rollout folds what landed). A watcher thread reads,
every 10 ms, how long ago each lease's last successful renewal was sent. Printed: the longest such
gap for each kind beside the renewal period (the raw limit: a renewal every ttl/3 can be no
fresher), their ratio, and whether the lease was lost (gap past the TTL).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path

import nats

from benchmarks.eventlog import added
from shared.auth.authority import Authority
from shared.config import Settings
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog, Write
from shared.lease import Lease, lease_bucket
from shared.lease_thread import ThreadLease


class Watch:
    """The longest time since each lease's last renewal, sampled from a thread of its own."""

    def __init__(self, leases: dict[str, Lease | ThreadLease]) -> None:
        self.leases = leases
        self.worst = dict.fromkeys(leases, 0.0)
        self.stop = threading.Event()

    def _gap(self, lease: Lease | ThreadLease) -> float:
        inner = lease._lease if isinstance(lease, ThreadLease) else lease  # the thread's Lease
        if inner is None or inner.revision is None:
            return float("inf")
        return time.monotonic() - (inner.valid_until - inner.ttl)

    def run(self) -> None:
        while not self.stop.wait(0.01):
            for name, lease in self.leases.items():
                self.worst[name] = max(self.worst[name], self._gap(lease))


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-lease-") as tmp:
        authority = Authority.load_or_create(Path(tmp) / "secrets")
        server = await EmbeddedNats(Path(tmp) / "nats", authority=authority).start()
        creds = str(authority.write_creds(Path(tmp) / "admin.creds", authority.issue("admin", "admin")))
        try:
            nc = await nats.connect(server.url, user_credentials=creds)
            log = EventLog(nc)
            await log.ensure_stream()
            kv, ttl = await lease_bucket(nc, args.ttl)
            settings = Settings(nats_url=server.url, nats_creds=creds, lease_ttl=ttl)
            in_loop = Lease(kv, "bench-in-loop", "bench", ttl=ttl)
            threaded = ThreadLease(settings, "bench-thread", "bench")
            tasks = [asyncio.create_task(in_loop.run()), asyncio.create_task(threaded.run())]
            await asyncio.wait_for(asyncio.gather(in_loop.gained.wait(), threaded.gained.wait()), 30)
            watch = Watch({"on the part's loop": in_loop, "in its own thread": threaded})
            watcher = threading.Thread(target=watch.run, daemon=True)
            watcher.start()
            writes = [Write(f"fleet.evt.device.lease-bench-{n}", [added(f"lease-bench-{n}")], 0)
                      for n in range(args.events)]
            started = time.perf_counter()
            await log.append_batch(writes)
            committed = time.perf_counter() - started
            # the fold of what landed: CPU-bound, no await, ~10 us per event as the rollout's
            busy_until = time.perf_counter() + args.events * 1e-5
            while time.perf_counter() < busy_until:
                pass
            took = time.perf_counter() - started
            await asyncio.sleep(ttl)
            watch.stop.set()
            watcher.join()
            in_loop.stop()
            threaded.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            await nc.close()
        finally:
            server.stop()
    period = ttl / 3
    print(f"\n{args.events:,} events committed in {committed:.1f} s ({args.events / committed:,.0f}/s), "
          f"folded by {took:.1f} s; lease time {ttl:g} s, renewal every {period:g} s\n")
    print("| lease renewed | longest gap since a renewal | renewal period (raw limit) | ratio | lost |")
    print("|---|---:|---:|---:|---|")
    for name, gap in watch.worst.items():
        print(f"| {name} | {gap:.2f} s | {period:.2f} s | {gap / period:.1f} | {'yes' if gap > ttl else 'no'} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--ttl", type=float, default=6.0)
    asyncio.run(main(parser.parse_args()))
