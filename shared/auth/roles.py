"""The role table (DESIGN §11) as data: who may publish and subscribe to what, enforced by
nats-server. A new service is one line in `SERVICES`.

Two accounts hold the users. FLEET holds the log, the buckets, the services, the devices and the
read-only roles; OPS holds the people and tools that send commands. FLEET exports its command
subjects as a service and OPS imports them with `share: true`, so the server stamps the identity
of every OPS requester (`Nats-Request-Info`) on the request: the services take the actor from
that stamp, never from the body (shared.auth.actor).
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet_agent import contract

from shared.auth.jwt import Permission, ResponsePermission, UserPermissions
from shared.subjects import (
    CHECKPOINTED,
    COMMANDS_PREFIX,
    DESIRED_BUCKET,
    EVENTS_PREFIX,
    EVENTS_STREAM,
    HEARTBEATS_PREFIX,
    checkpoint_bucket,
)

FLEET = "FLEET"
OPS = "OPS"
LEASES_BUCKET = "fleet_leases"
TOKENS_BUCKET = "fleet_tokens"
IDENTITY_BUCKET = "fleet_identity"  # the authority's revocation state (services.authority.state)
DEVICE_PAYLOAD = 8 * 1024  # a heartbeat is a few KiB at most (DESIGN §11)
NAME_TEMPLATE = "{{name()}}"
RENEW_PREFIX = contract.RENEW_PREFIX  # a device asks for a fresh JWT on fleet.renew.<its id>
ROLE_TAG = "fleet-role:"  # user JWT tag naming the role; the server stamps it on requests
INBOX = "_INBOX.>"  # stands for the identity's own inbox prefix in the table below (`inbox_prefix`)

# Per service: the event families it appends to (DESIGN §1), the extra subjects it may publish
# ("DESIRED": it reads the desired-state bucket), and the extra subjects it may subscribe to
# besides its own commands and the log.
SERVICES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "registry": (("site", "device"), (), ()),
    "snapshot": (("snapshot",), (), ()),
    "rollout": (("rollout", "desired"), (f"$KV.{DESIRED_BUCKET}.>", "DESIRED"), (f"{HEARTBEATS_PREFIX}.>",)),
    "drift": (("observed",), (f"$KV.{DESIRED_BUCKET}.>", "DESIRED", f"{COMMANDS_PREFIX}.drift-*.*"),
              (f"{HEARTBEATS_PREFIX}.>", "fleet.hbp.>", f"{COMMANDS_PREFIX}.drift-*.*")),
    "audit": (("audit",), (), ()),
    "projections": ((), (), ()),
    # the identity duties (services.authority): answers devices' renewals on their inboxes
    "authority": ((), (f"$KV.{IDENTITY_BUCKET}.state", f"$JS.API.STREAM.INFO.KV_{IDENTITY_BUCKET}",
                       f"$JS.API.DIRECT.GET.KV_{IDENTITY_BUCKET}.$KV.{IDENTITY_BUCKET}.state"),
                  (f"{RENEW_PREFIX}.*", f"$KV.{IDENTITY_BUCKET}.state")),
}


def _direct_reads(stream: str) -> list[str]:
    """JetStream API subjects that read a stream without leaving anything on the server: info,
    direct and message gets (batched direct gets read a range)."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
    ]


def _reads(stream: str) -> list[str]:
    """Direct reads and (ordered) consumers with their acks and flow control. Consumers only on
    the unnamed create subject, where the server refuses a durable name (err 10020): a reader can
    leave no durable consumer behind (`CONSUMER.CREATE.<stream>.<name>` and `DURABLE.CREATE`
    would make one that outlives it and counts against the stream's consumers for ever)."""
    return [
        *_direct_reads(stream),
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


_JS_COMMON = ["$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST"]
_LOG_READ = [*_JS_COMMON, *_reads(EVENTS_STREAM)]
_DESIRED_READ = _reads(f"KV_{DESIRED_BUCKET}")
# Per part: the lease keys it may take (shared.lease; NATS wildcards). Nobody else may read or
# write them: a stolen identity cannot squat another part's lease (a KV put is a publish on the
# key's subject, a get a direct get naming it).
LEASES: dict[str, tuple[str, ...]] = {
    "registry": ("registry-checkpoints",),
    "snapshot": (),
    "rollout": ("rollout-ticks",),
    "drift": ("drift", "drift.>"),  # drift.<k>-of-<N> per partition
    "audit": ("audit",),
    "projections": ("projection-changes", "projection-fleet"),
    "authority": ("authority",),
}


def _leases(keys: tuple[str, ...]) -> list[str]:
    """Rights on the lease bucket for these keys: check the bucket, get, put and delete them."""
    stream = f"KV_{LEASES_BUCKET}"  # every process checks the bucket at start (shared.cluster)
    return [f"$JS.API.STREAM.INFO.{stream}",
            *(s for key in keys for s in (f"$KV.{LEASES_BUCKET}.{key}",
                                          f"$JS.API.DIRECT.GET.{stream}.$KV.{LEASES_BUCKET}.{key}"))]


# Every process checks the log and the buckets' settings at start (shared.cluster.ensure_log).
_CHECK_DESIRED = f"$JS.API.STREAM.INFO.KV_{DESIRED_BUCKET}"
# Nobody but admin changes a stream's existence, settings or history.
_MANAGEMENT = ["$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.DELETE.>",
               "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>", "$JS.API.STREAM.RESTORE.>",
               "$JS.API.ACCOUNT.PURGE.>", "$JS.API.STREAM.SNAPSHOT.>"]
_REPLIES = ResponsePermission(max=1, ttl=0)


@dataclass(frozen=True)
class Role:
    """One kind of identity: its account and what the server lets it do."""

    name: str
    account: str
    permissions: UserPermissions
    doc: str


def _perm(pub: list[str], sub: list[str], *, deny_pub: list[str] | None = None,
          payload: int = -1, resp: bool = False) -> UserPermissions:
    return UserPermissions(pub=Permission(allow=pub, deny=deny_pub), sub=Permission(allow=sub),
                           resp=_REPLIES if resp else None, payload=payload)


def _checkpoints(service: str) -> list[str]:
    """Rights on the service's own checkpoint bucket: read it (info, gets, ordered consumers),
    write objects (chunks and a meta message) and purge the chunks an object replaced. Written
    with wildcards to keep the user JWT short (a server refuses a CONNECT line over 4 KiB); what
    they would also match (creating, changing or deleting the stream) stays denied."""
    if service not in CHECKPOINTED:
        return []
    stream = f"OBJ_{checkpoint_bucket(service)}"
    return [f"$JS.API.*.*.{stream}", f"$JS.API.*.*.{stream}.>", f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.FC.{stream}.>", f"$O.{checkpoint_bucket(service)}.>"]


def service_role(service: str) -> Role:
    """`service:<name>`: appends only its own families, serves only its own commands, writes
    only its own checkpoints."""
    families, pubs, subs = SERVICES[service]
    pub = [f"{EVENTS_PREFIX}.{family}.>" for family in families]
    pub += [*(p for p in pubs if p != "DESIRED"), *(_DESIRED_READ if "DESIRED" in pubs else []),
            *_LOG_READ, *_leases(LEASES.get(service, ())), _CHECK_DESIRED, *_checkpoints(service), "$SRV.>", "_INBOX.>"]
    sub = [f"{COMMANDS_PREFIX}.{service}.*", *subs, "$SRV.>", "_INBOX.>"]
    # Purging is not denied outright (a deny beats any allow): only the checkpoint bucket's
    # purge is allowed, and nothing else that purges.
    deny = [m for m in _MANAGEMENT if m != "$JS.API.STREAM.PURGE.>"]
    return Role(f"service:{service}", FLEET, _perm(pub, sub, deny_pub=deny, resp=True),
                f"the {service} service")


DEVICE_TEMPLATE = _perm(
    [f"{HEARTBEATS_PREFIX}.*.{NAME_TEMPLATE}",
     f"$JS.API.DIRECT.GET.KV_{DESIRED_BUCKET}.$KV.{DESIRED_BUCKET}.{NAME_TEMPLATE}",
     f"{RENEW_PREFIX}.{NAME_TEMPLATE}"],
    [f"$KV.{DESIRED_BUCKET}.{NAME_TEMPLATE}", f"_INBOX.{NAME_TEMPLATE}.>"],
    payload=DEVICE_PAYLOAD,
)

ROLES: dict[str, Role] = {
    "admin": Role("admin", FLEET, _perm([">"], [">"]),
                  "manages streams and buckets, issues and revokes identities"),
    "operator": Role("operator", OPS, _perm([f"{COMMANDS_PREFIX}.>", "$SRV.>"], ["_INBOX.>"]),
                     "sends commands and reads their replies"),
    "auditor": Role("auditor", FLEET, _perm([*_JS_COMMON, *_direct_reads(EVENTS_STREAM)], ["_INBOX.>"],
                                            deny_pub=_MANAGEMENT),
                    "reads the log with direct gets (no consumer: it leaves nothing on the server); "
                    "writes nothing"),
    # The API replays only bounded ranges (point in time) and reads keys: direct gets, no consumer
    # (so it can neither leave one behind nor aim one at a foreign deliver subject).
    "api": Role("api", FLEET,
                _perm([*_JS_COMMON, *_direct_reads(EVENTS_STREAM), *_direct_reads(f"KV_{DESIRED_BUCKET}"),
                       *_direct_reads(f"KV_{TOKENS_BUCKET}"), f"{COMMANDS_PREFIX}.>", "$SRV.>"],
                      # it answers for its own duties (shared.liveness) like every part: the
                      # requests it may take, and one reply to each (resp)
                      ["_INBOX.>", f"$KV.{TOKENS_BUCKET}.>", "$SRV.DUTIES", "$SRV.DUTIES.api"],
                      deny_pub=_MANAGEMENT, resp=True),
                "the HTTP API: reads the log with direct gets, forwards commands on behalf of its callers"),
    "simulator": Role("simulator", FLEET,
                      _perm([f"{HEARTBEATS_PREFIX}.>", *_DESIRED_READ,
                             f"{COMMANDS_PREFIX}.registry.add_site",
                             f"{COMMANDS_PREFIX}.registry.import_devices", "$SRV.>"],
                            [f"$KV.{DESIRED_BUCKET}.>", "_INBOX.>"], deny_pub=_MANAGEMENT),
                      "TEST ONLY: speaks for many simulated devices at once"),
    "device": Role("device", FLEET, DEVICE_TEMPLATE,
                   "one device: its heartbeat, its own desired state, its own inbox"),
    **{f"service:{name}": service_role(name) for name in SERVICES},
}

# Roles whose in-account requests may name the principal they act for (Fleet-On-Behalf-Of):
# only these may publish on fleet.cmd.> inside FLEET at all (see shared.auth.actor).
FORWARDERS = ("admin", "api", "service:drift", "simulator")


def inbox_prefix(role_name: str, name: str) -> str | None:
    """The inbox prefix of an identity: `_INBOX.<id>` for a device (the wire contract), a prefix
    of its own for every other identity but admin (`_INBOX_<role>.<name>`, operators in OPS
    included), so none can read another's replies; None (nats-py's default `_INBOX`) for admin."""
    if role_name == "device":
        return f"_INBOX.{name}"
    the_role = ROLES.get(role_name)
    if the_role is None or role_name == "admin":
        return None
    return f"_INBOX_{role_name.replace(':', '_')}.{name}"


def role(name: str) -> Role:
    """The role called `name` (`service:<svc>` for services)."""
    try:
        return ROLES[name]
    except KeyError:
        from shared.errors import Invalid

        raise Invalid(f"unknown role {name!r}; known: {', '.join(sorted(ROLES))}", field="role") from None
