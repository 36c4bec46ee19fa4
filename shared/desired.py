"""The desired-state KV bucket `fleet_desired` (DESIGN §5): ensure it, read one device's value
with a direct get, read them all in pages, and put many values in atomic batches.

The bucket is a JetStream stream (`KV_fleet_desired`) created here rather than through nats-py's
`create_key_value`, because that helper cannot set `allow_atomic`, which batched puts need
(DESIGN §4: atomic batches of puts are ~8x faster than concurrent single puts). The layout is the
one every KV client understands: subjects `$KV.fleet_desired.<key>`, one value per key, no rollup
headers and no purge (DESIGN §11), direct gets on.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import nats.errors
import nats.js.errors
from fleet_agent import contract
from fleet_agent.contract import decode_desired
from fleet_agent.desired import DesiredUnreachable, read_desired
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from shared.atomic import Message, publish_atomic
from shared.devices import DESIRED_ENCODER, DesiredState, EncodedDesiredState
from shared.errors import StreamMisconfigured, Unavailable
from shared.subjects import DESIRED_BUCKET, desired_key_subject

DESIRED_STREAM = contract.DESIRED_STREAM
DESIRED_WILDCARD = f"$KV.{DESIRED_BUCKET}.>"
MAX_BATCH = 1000
RETRY_FOR = 30.0  # seconds a put keeps resending through a leader election
_DIRECT = f"$JS.API.DIRECT.GET.{DESIRED_STREAM}"
_ENCODER = msgspec.json.Encoder()


def stream_config(replicas: int = 1) -> api.StreamConfig:
    """The KV stream of `fleet_desired`, with atomic batches and direct gets allowed."""
    return api.StreamConfig(
        name=DESIRED_STREAM,
        subjects=[DESIRED_WILDCARD],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        num_replicas=replicas,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        max_msgs_per_subject=1,  # history 1: the current desired state only
        max_consumers=-1,
        discard=api.DiscardPolicy.NEW,
        deny_delete=True,
        deny_purge=True,  # nobody wipes every device's desired state at once (DESIGN §11)
        allow_rollup_hdrs=False,  # a roll-up is a purge (the server refuses it with deny_purge)
        duplicate_window=120.0,
        allow_direct=True,
        allow_atomic=True,
    )


async def ensure_bucket(nc: NATS, replicas: int = 1) -> api.StreamInfo:
    """Create the bucket, or turn on `allow_atomic`/`allow_direct` on an existing one."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(DESIRED_STREAM)
    except nats.js.errors.NotFoundError:
        try:
            return await js.add_stream(stream_config(replicas))
        except nats.js.errors.BadRequestError:  # created concurrently by another starter
            info = await js.stream_info(DESIRED_STREAM)
        except nats.errors.TimeoutError:  # the server refused: only admin creates buckets
            raise Unavailable(f"the {DESIRED_STREAM} bucket does not exist and this identity may not "
                              "create it; `fleet up` (admin) creates it") from None
    if (info.config.num_replicas or 1) < replicas:
        raise StreamMisconfigured(
            f"bucket {DESIRED_BUCKET} has {info.config.num_replicas or 1} replicas (< {replicas} asked by "
            "FLEET_REPLICAS or the cluster's size). Fleetplane will not change an existing stream's "
            "replicas; raise them by hand (`nats stream edit --replicas`).", field="replicas")
    if not (info.config.allow_atomic and info.config.allow_direct and info.config.deny_purge) \
            or info.config.allow_rollup_hdrs:
        info = await js.update_stream(info.config.evolve(allow_atomic=True, allow_direct=True, deny_purge=True,
                                                         allow_rollup_hdrs=False))
    return info


decode_value = decode_desired  # the device's contract: fleet_agent.contract


def _status(msg: Msg) -> str | None:
    status = (msg.headers or {}).get("Status")
    return str(status) if status else None


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
    next_seq = 1
    while True:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        more = False
        try:
            request = {"seq": next_seq, "next_by_subj": DESIRED_WILDCARD, "batch": batch}
            await nc.publish(_DIRECT, _ENCODER.encode(request), reply=inbox)
            while True:
                try:
                    msg = await sub.next_msg(timeout)
                except nats.errors.TimeoutError as exc:
                    raise Unavailable("desired-state bucket read timed out") from exc
                status = _status(msg)
                headers = msg.headers or {}
                if status == "404":
                    break
                if status == "204":
                    more = int(headers.get("Nats-Num-Pending", "0") or 0) > 0
                    break
                if status:
                    raise Unavailable(f"direct get failed: {status} {headers.get('Description')}")
                next_seq = int(headers["Nats-Sequence"]) + 1
                key = headers["Nats-Subject"][prefix_len:]
                if headers.get("KV-Operation") in ("DEL", "PURGE"):
                    values.pop(key, None)
                    continue
                value = decode_value(msg.data)
                if value is not None:
                    values[key] = value
        finally:
            await sub.unsubscribe()
        if not more:
            return values


async def put_desired(nc: NATS, values: Sequence[DesiredState | EncodedDesiredState],
                      timeout: float = 5.0) -> int:
    """Put many values, in atomic batches of up to 1,000; returns the last stream sequence.

    Each batch is stored all or nothing (ADR-50); a refused batch raises."""
    last = 0
    for start in range(0, len(values), MAX_BATCH):
        batch = values[start:start + MAX_BATCH]
        # A put is idempotent (the same value again), so a batch that met a leader election on a
        # cluster is simply sent again, for up to RETRY_FOR seconds.
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(_Transient), reraise=True,
                                           wait=wait_exponential(multiplier=0.05, max=1.0),
                                           stop=stop_after_delay(RETRY_FOR)):
            with attempt:
                last = await _put_batch(nc, batch, timeout)
    return last


class _Transient(Unavailable):
    """The bucket had no leader or did not answer in time: sending again is safe."""


async def _put_batch(nc: NATS, values: Sequence[DesiredState | EncodedDesiredState], timeout: float) -> int:
    if not values:
        return 0
    js = nc.jetstream(timeout=timeout)
    if len(values) == 1:
        value = values[0]
        try:
            ack = await js.publish(desired_key_subject(value.device_id), DESIRED_ENCODER.encode(value),
                                   timeout=timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                nats.js.errors.NoStreamResponseError) as exc:
            raise _Transient(f"desired-state bucket not reachable: {exc!r}") from exc
        return int(ack.seq)
    messages: list[Message] = [(desired_key_subject(v.device_id), DESIRED_ENCODER.encode(v), {}) for v in values]
    try:
        return await publish_atomic(nc, messages, timeout)
    except nats.js.errors.ServiceUnavailableError as exc:
        raise _Transient(f"desired-state bucket unavailable: {exc.description}") from exc
    except nats.js.errors.APIError as exc:
        raise Unavailable(f"desired-state batch refused: {exc.description} (err {exc.err_code})",
                          field="desired") from exc
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise _Transient(f"desired-state bucket not reachable: {exc!r}") from exc


