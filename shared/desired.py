"""The desired-state KV bucket `fleet_desired` (DESIGN §5): ensure it, read one device's value
with a direct get, read them all in pages, and put many values in atomic batches.

The bucket is a JetStream stream (`KV_fleet_desired`, shared.jetstream.DESIRED) created as a plain
stream rather than through nats-py's `create_key_value`, because that helper cannot set
`allow_atomic`, which batched puts need (DESIGN §4: atomic batches of puts are ~8x faster than
concurrent single puts). The layout is the one every KV client understands: subjects
`$KV.fleet_desired.<key>`, one value per key, no rollup headers and no purge (DESIGN §11), direct
gets on.
"""

from __future__ import annotations

from collections.abc import Sequence

import nats.errors
import nats.js.errors
from fleet_agent import contract
from fleet_agent.contract import decode_desired
from fleet_agent.desired import DesiredUnreachable, read_desired
from nats.aio.client import Client as NATS
from nats.js import api

from shared.atomic import MAX_BATCH, Message, publish
from shared.devices import DESIRED_ENCODER, DesiredState, EncodedDesiredState
from shared.errors import Unavailable
from shared.jetstream import DESIRED, direct_batch, ensure
from shared.subjects import DESIRED_BUCKET, desired_key_subject

DESIRED_STREAM = contract.DESIRED_STREAM
DESIRED_WILDCARD = f"$KV.{DESIRED_BUCKET}.>"
RETRY_FOR = 30.0  # seconds a put keeps resending through a leader election


async def ensure_bucket(nc: NATS, replicas: int = 1) -> api.StreamInfo:
    """Create the bucket, or check an existing one and refuse weaker settings."""
    return await ensure(nc, DESIRED, replicas)


decode_value = decode_desired  # the device's contract: fleet_agent.contract


async def get_desired(nc: NATS, device_id: str, timeout: float = 5.0) -> DesiredState | None:
    """One device's desired state by direct get (None when it has none): the agent's own read
    (`fleet_agent.desired`), its failure as Unavailable."""
    try:
        return await read_desired(nc, device_id, timeout)
    except DesiredUnreachable as exc:
        raise Unavailable(str(exc)) from exc


async def get_all_desired(nc: NATS, batch: int = 1000, timeout: float = 5.0) -> dict[str, DesiredState]:
    """Every key's current value, read in pages of batched direct gets (history is 1, so each
    stored message is the current value of its key)."""
    values: dict[str, DesiredState] = {}
    prefix_len = len(DESIRED_WILDCARD) - 1
    next_seq, more = 1, True
    while more:
        msgs, more = await direct_batch(nc, DESIRED_STREAM, DESIRED_WILDCARD, next_seq, batch, timeout=timeout)
        for seq, msg in msgs:
            next_seq, key = seq + 1, msg.subject[prefix_len:]
            if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                values.pop(key, None)
            elif (value := decode_value(msg.data)) is not None:
                values[key] = value
        more = more and bool(msgs)
    return values


async def put_desired(nc: NATS, values: Sequence[DesiredState | EncodedDesiredState],
                      timeout: float = 5.0) -> int:
    """Put many values, in atomic batches of up to 1,000; returns the last stream sequence.

    Each batch is stored all or nothing (ADR-50); a refused batch raises."""
    last = 0
    for start in range(0, len(values), MAX_BATCH):
        messages: list[Message] = [(desired_key_subject(v.device_id), DESIRED_ENCODER.encode(v), {})
                                   for v in values[start:start + MAX_BATCH]]
        # A put is idempotent (the same value again), so a batch that met a leader election on a
        # cluster is simply sent again, for up to RETRY_FOR seconds.
        try:
            last = await publish(nc, messages, timeout=timeout, retry_for=RETRY_FOR, what=DESIRED_STREAM)
        except nats.js.errors.APIError as exc:
            raise Unavailable(f"desired-state batch refused: {exc.description} (err {exc.err_code})",
                              field="desired") from exc
    return last
