"""The services' own metrics for `GET /metrics`: every service answers `$SRV.STATS` (NATS micro
services API) with its commands by result and its process metrics; this gathers the answers of
all instances for a moment and renders them as Prometheus text, labelled by service and instance."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

_NAME = re.compile(r"[^a-zA-Z0-9_:]")


async def gather_stats(nc: NATS, wait: float = 0.25) -> list[dict[str, Any]]:
    """`$SRV.STATS` answers from every running service instance within `wait` seconds."""
    answers: list[dict[str, Any]] = []
    inbox = nc.new_inbox()

    async def collect(msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            answers.append(msgspec.json.decode(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish("$SRV.STATS", b"", reply=inbox)
        await asyncio.sleep(wait)
    finally:
        await sub.unsubscribe()
    return answers


def render(answers: list[dict[str, Any]]) -> list[str]:
    """Prometheus text lines for the services' process metrics (commands by result, append
    latency, heartbeats by outcome, drift and rollout counters), labelled by service and instance."""
    rows: dict[str, list[str]] = {}
    for answer in answers:
        base = {"service": str(answer.get("name", "")), "instance": str(answer.get("id", ""))}
        for endpoint in answer.get("endpoints") or []:
            for name, labels, value in (endpoint.get("data") or {}).get("metrics") or []:
                metric = _NAME.sub("_", name)
                rows.setdefault(metric, []).append(_line(metric, {**labels, **base}, value))
    lines: list[str] = []
    for metric, metric_rows in sorted(rows.items()):
        kind = "counter" if metric.endswith(("_total", "_count", "_sum")) else "gauge"
        lines += [f"# TYPE {metric} {kind}", *metric_rows]
    return lines


def _line(metric: str, labels: dict[str, str], value: float) -> str:
    inner = ",".join(f'{_NAME.sub("_", k)}="{str(v).replace(chr(34), "")}"' for k, v in labels.items())
    return f"{metric}{{{inner}}} {value}"
