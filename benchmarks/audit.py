"""Benchmark of `fleet audit verify` (issue 12): the verify rate over the stream next to the raw
replay rate measured in the same run, and the time to verify 5,000,000 events.

    .venv/bin/python -m benchmarks.audit [--events 1000000] [--every 1000] [--rounds 3] [--quick]

Starts an EmbeddedNats (`sync_interval: always`) in a temporary directory, appends `--events`
events (DeviceRelabeled envelopes as the event-log benchmark writes them, ten per device, in atomic
batches of 1,000, four in flight), lets the checkpoint writer (`services.audit.handlers`) hash the
log and append a signed checkpoint every `--every` events plus one at the end (timed: the writer's
rate), then in each round measures, one after the other:

- raw: a nats-py ordered consumer with a callback that only counts the messages of the whole
  stream (no decoding, no hashing) — the most the stream gives a Python reader;
- verify: `shared.audit.source.verify_stream` as `fleet audit verify` runs it: a first ordered-
  consumer pass over `fleet.evt.audit.>` (keys and checkpoints), then every message re-hashed into
  the chain with its 8-byte digest, every checkpoint's signature and chain checked;
- offline: `verify_file` over an export of the same log (`fleet audit export`), for context.

Events/s are medians over the rounds; the ratio is the median of the per-round ratios. The time
for 5,000,000 events is extrapolated from the verify rate when `--events` is smaller (verify is a
single pass with memory bounded by one checkpoint's range, so its rate does not depend on the
log's length; the raw rate may, with the page cache).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
from nacl.signing import SigningKey

from benchmarks.eventlog import history
from benchmarks.projections import raw_rate
from services.audit.handlers import CheckpointWriter
from shared.audit.source import export_line, verify_file, verify_stream
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog, Write
from shared.subjects import event_subject

FIVE_MILLION = 5_000_000


async def fill(log: EventLog, events: int, in_flight: int = 4) -> float:
    """Append `events` events in atomic batches of 1,000 (100 devices x 10 events each)."""
    batches = iter(range(0, events, 1000))
    started = time.perf_counter()

    async def worker() -> None:
        for start in batches:
            count = min(1000, events - start)
            writes = [Write(event_subject("device", f"d-{start + i:08d}"), history(f"d-{start + i:08d}", 10), 0)
                      for i in range(0, count, 10)]
            await log.append_batch(writes)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return events / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-audit-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        await server.start()
        nc = await nats.connect(server.url, pending_size=256 * 1024 * 1024)
        try:
            log = EventLog(nc, timeout=30.0)
            await log.ensure_stream()
            key = SigningKey.generate()
            writer = CheckpointWriter(log, key, every=args.every)
            await writer.resume()
            append_rate = await fill(log, args.events)
            print(f"appended {args.events:,} events at {append_rate:,.0f}/s", file=sys.stderr)
            started = time.perf_counter()
            await writer.catch_up()
            await writer.finish()
            hashed = writer.chain.seq
            writer_rate = hashed / (time.perf_counter() - started)
            head = await log.last_stream_seq()
            print(f"writer: {writer.written} checkpoints over {hashed:,} messages at {writer_rate:,.0f}/s; "
                  f"log head {head:,}", file=sys.stderr)

            export = Path(tmp) / "export.jsonl"
            started = time.perf_counter()
            with export.open("wb") as handle:
                async for seq, subject, body in log.replay_raw(1, head):
                    handle.write(export_line(seq, subject, body))
            export_rate = head / (time.perf_counter() - started)

            raws, verifies, ratios, offlines = [], [], [], []
            pinned = [bytes(key.verify_key)]
            for round_no in range(1, args.rounds + 1):
                raw = await raw_rate(nc, head)
                started = time.perf_counter()
                report = await verify_stream(log, pinned=pinned)
                verify = head / (time.perf_counter() - started)
                assert report.intact, report
                assert report.events == head, report
                started = time.perf_counter()
                offline_report = await asyncio.to_thread(verify_file, export, pinned=pinned)
                offline = head / (time.perf_counter() - started)
                assert offline_report.intact, offline_report
                assert offline_report.head == report.head
                raws.append(raw)
                verifies.append(verify)
                offlines.append(offline)
                ratios.append(verify / raw)
                print(f"round {round_no}: raw {raw:,.0f}/s, verify {verify:,.0f}/s ({verify / raw:.2f}x), "
                      f"offline {offline:,.0f}/s", file=sys.stderr)
        finally:
            await nc.close()
            server.stop()

    raw_m, verify_m, offline_m = (statistics.median(v) for v in (raws, verifies, offlines))
    ratio = statistics.median(ratios)
    print(f"\nPython {platform.python_version()}, {args.events:,} events + {writer.written} checkpoints "
          f"(every {args.every}), {args.rounds} rounds\n")
    print("| measure | raw ordered consumer events/s | ours events/s | ours / raw (range) | goal | met? |")
    print("|---|---:|---:|---:|---:|---|")
    print(f"| verify the stream (`fleet audit verify`) | {raw_m:,.0f} | {verify_m:,.0f} | {ratio:.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f}) | >= 0.5x | {'yes' if ratio >= 0.5 else '**NO**'} |")
    print(f"| verify an export offline (`--file`) | - | {offline_m:,.0f} | - | - | - |")
    print(f"| checkpoint writer (hash + sign every {args.every}) | - | {writer_rate:,.0f} | - | - | - |")
    print(f"| export (`fleet audit export` path) | - | {export_rate:,.0f} | - | - | - |")
    measured = "measured" if args.events >= FIVE_MILLION else f"extrapolated from {args.events:,}"
    print(f"\ntime to verify 5,000,000 events: {FIVE_MILLION / verify_m:,.0f} s ({measured}); "
          f"raw replay of as many: {FIVE_MILLION / raw_m:,.0f} s")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20,000 events, one round")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.rounds = 20_000, 1
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
