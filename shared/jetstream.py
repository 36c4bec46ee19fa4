"""Every JetStream store Fleetplane uses, with its settings, and the one `ensure` (DESIGN §4, §13).

`ensure` creates a missing store where this identity may (admin: `fleet up`, `fleet init`; anyone
on a server without authorization) and checks an existing one: settings weaker than the table's
are refused with a message naming each, and an existing store is never changed (an operator fixes
it by hand). KV buckets and object stores are streams too: their rows hold what nats-py's
`create_key_value` / `create_object_store` make, so KV and object store clients use them as their
own, plus what Fleetplane needs on top (`allow_atomic` for batched puts, `deny_purge`). The audit
chain has no store of its own: its checkpoints are events on FLEET_EVENTS (`fleet.evt.audit.<n>`).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from shared.auth.roles import IDENTITY_BUCKET, LEASES_BUCKET, TOKENS_BUCKET
from shared.errors import StreamMisconfigured, Unavailable
from shared.subjects import DESIRED_BUCKET, EVENTS_STREAM, EVENTS_WILDCARD, checkpoint_bucket
from shared.transient import reachable

DUPLICATE_WINDOW = 120.0


@dataclass(frozen=True)
class Store:
    """One JetStream stream of Fleetplane and the settings it must have."""

    stream: str
    subjects: tuple[str, ...]
    description: str
    history: int = -1  # messages kept per subject (-1: all)
    max_age: float = 0.0  # seconds a message is kept (0: for ever; the lease bucket's lease time)
    deny_delete: bool = True  # off only where nats-py's object store makes it so
    deny_purge: bool = False
    allow_rollup: bool = True  # how KV and object stores delete; never on the log
    allow_atomic: bool = False  # atomic batches (the log's appends, batched desired-state puts)
    allow_msg_ttl: bool = False
    discard: api.DiscardPolicy | None = api.DiscardPolicy.NEW

    def config(self, replicas: int = 1) -> api.StreamConfig:
        """The stream's configuration with `replicas` replicas."""
        return api.StreamConfig(
            name=self.stream, description=self.description, subjects=list(self.subjects),
            storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS, num_replicas=replicas,
            max_msgs=-1, max_bytes=-1, max_age=self.max_age, max_msgs_per_subject=self.history,
            discard=self.discard, deny_delete=self.deny_delete, deny_purge=self.deny_purge,
            allow_rollup_hdrs=self.allow_rollup, allow_direct=True, allow_atomic=self.allow_atomic or None,
            allow_msg_ttl=self.allow_msg_ttl or None,
            # the server keeps no window longer than the messages themselves (a KV with a TTL)
            duplicate_window=min(DUPLICATE_WINDOW, self.max_age) if self.max_age else DUPLICATE_WINDOW)


def _kv(bucket: str, description: str, *, history: int = 1, max_age: float = 0.0) -> Store:
    return Store(f"KV_{bucket}", (f"$KV.{bucket}.>",), description, history=history, max_age=max_age,
                 allow_msg_ttl=True)


# The table: every store, with its settings.
EVENTS = Store(EVENTS_STREAM, (EVENTS_WILDCARD,), "Fleetplane: the event log (DESIGN §4)", deny_purge=True,
               allow_rollup=False, allow_atomic=True, discard=None)
DESIRED = Store(f"KV_{DESIRED_BUCKET}", (f"$KV.{DESIRED_BUCKET}.>",), "Fleetplane: desired state per device",
                history=1,  # the current desired state only
                deny_purge=True,  # nobody wipes every device's desired state at once (DESIGN §11)
                allow_rollup=False,  # a roll-up is a purge
                allow_atomic=True)
LEASES = _kv(LEASES_BUCKET, "Fleetplane leases: one driver at a time", max_age=6.0)  # max_age: the lease time
TOKENS = _kv(TOKENS_BUCKET, "Fleetplane HTTP API tokens (hashed)")
IDENTITY = _kv(IDENTITY_BUCKET, "Fleetplane: the authority's revocation state (one key)", history=5)


def state_images(service: str) -> Store:
    """The object store of one service's state images (shared.checkpoint)."""
    bucket = checkpoint_bucket(service)
    return Store(f"OBJ_{bucket}", (f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"),
                 f"Fleetplane: checkpoints of the {service} service's state", deny_delete=False)


def weaker(actual: api.StreamConfig, wanted: api.StreamConfig) -> list[str]:
    """What makes an existing stream weaker than `wanted` (empty when it is fine)."""
    problems = []
    if actual.storage != api.StorageType.FILE:
        problems.append(f"storage is {actual.storage} (not durable)")
    if (actual.num_replicas or 1) < (wanted.num_replicas or 1):
        problems.append(f"num_replicas is {actual.num_replicas or 1} (< {wanted.num_replicas} asked by "
                        "FLEET_REPLICAS or the cluster's size)")
    missing = [s for s in wanted.subjects or [] if s not in (actual.subjects or [])]
    if missing:
        problems.append(f"subjects {actual.subjects} do not include {', '.join(missing)}")
    for flag, why in (("deny_delete", "messages could be deleted"), ("deny_purge", "it could be purged"),
                      ("allow_atomic", "multi-message writes could not be all-or-nothing"),
                      ("allow_direct", "direct gets would fail")):
        if getattr(wanted, flag) and not getattr(actual, flag):
            problems.append(f"{flag} is off ({why})")
    if actual.allow_rollup_hdrs and not wanted.allow_rollup_hdrs:
        problems.append("allow_rollup_hdrs is on (a rollup could erase history)")
    for name in ("max_msgs", "max_bytes", "max_msgs_per_subject"):
        value, asked = getattr(actual, name) or 0, getattr(wanted, name) or 0
        if value > 0 and (asked <= 0 or value < asked):
            problems.append(f"{name} is {value} (old messages would be dropped)")
    if actual.max_age and not wanted.max_age:
        problems.append(f"max_age is {actual.max_age}s (old messages would expire)")
    window = min(wanted.duplicate_window or 0, actual.max_age or DUPLICATE_WINDOW)
    if (actual.duplicate_window or 0) < window:
        problems.append(f"duplicate_window is {actual.duplicate_window}s (< {window:.0f}s)")
    return problems


async def ensure(nc: NATS, store: Store, replicas: int = 1, *, timeout: float = 5.0) -> api.StreamInfo:
    """Create `store` when it is missing and this identity may, or check the existing one: raise
    StreamMisconfigured naming every weaker setting; never change it."""
    js = nc.jetstream(timeout=timeout)
    wanted = store.config(replicas)
    try:
        info = await js.stream_info(store.stream)
    except nats.errors.TimeoutError:  # refused even a look, or no server answered
        raise Unavailable(f"{store.stream} could not be looked at (this identity may not, or NATS did not "
                          "answer)") from None
    except nats.js.errors.NotFoundError:
        try:
            return await js.add_stream(wanted)
        except nats.js.errors.BadRequestError:  # created by a concurrent starter meanwhile
            info = await js.stream_info(store.stream)
        except nats.errors.TimeoutError:  # the server refused: only admin creates stores
            raise Unavailable(f"{store.stream} does not exist and this identity may not create it; "
                              "`fleet up` or `fleet init` (admin) creates it") from None
    problems = weaker(info.config, wanted)
    if problems:
        raise StreamMisconfigured(
            f"stream {store.stream} exists with settings weaker than Fleetplane needs: " + "; ".join(problems)
            + ". Fleetplane will not change an existing stream; fix it by hand (`nats stream edit`) or use "
            "another NATS account.", field="stream")
    return info


def status_of(msg: Msg) -> str | None:
    """The status of a direct get's reply ("404": none; None: a message)."""
    status = (msg.headers or {}).get("Status")
    return str(status) if status else None


async def direct_batch(nc: NATS, stream: str, subject: str, start_seq: int, batch: int, *,
                       timeout: float) -> tuple[list[tuple[int, Msg]], bool]:
    """One batched direct get of `stream`'s messages matching `subject` from `start_seq`: (stream
    sequence, message with its stored subject and headers) and whether more are pending. No
    consumer: what the log's bounded reads and the desired-state pages use."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        request = {"seq": start_seq, "next_by_subj": subject, "batch": batch}
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", msgspec.json.encode(request), reply=inbox)
        out: list[tuple[int, Msg]] = []
        while True:
            with reachable(f"{stream} ({subject})"):
                msg = await sub.next_msg(timeout)
            status, headers = status_of(msg), msg.headers or {}
            if status == "404":
                return out, False
            if status == "204":  # end of batch
                return out, int(headers.get("Nats-Num-Pending", "0") or 0) > 0
            if status:
                raise Unavailable(f"direct get failed: {status} {headers.get('Description')}")
            out.append((int(headers["Nats-Sequence"]),
                        Msg(nc, subject=headers["Nats-Subject"], data=msg.data, headers=headers)))
    finally:
        await sub.unsubscribe()
