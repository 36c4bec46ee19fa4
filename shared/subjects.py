"""Every NATS subject and JetStream name Fleetplane uses, in one place (DESIGN §1, §3-§5)."""

from __future__ import annotations

EVENTS_STREAM = "FLEET_EVENTS"
EVENTS_PREFIX = "fleet.evt"
EVENTS_WILDCARD = f"{EVENTS_PREFIX}.>"
COMMANDS_PREFIX = "fleet.cmd"
HEARTBEATS_PREFIX = "fleet.hb"
DESIRED_BUCKET = "fleet_desired"
# Services whose state is checkpointed (shared.checkpoint), each in a bucket of its own.
CHECKPOINTED = ("registry", "rollout", "drift")


def checkpoint_bucket(service: str) -> str:
    """The object store bucket holding `service`'s checkpoints (only it and admin write there)."""
    return f"fleet_ckpt_{service}"


def event_subject(aggregate: str, aggregate_id: str) -> str:
    """`fleet.evt.<aggregate>.<id>`: one subject per aggregate instance."""
    return f"{EVENTS_PREFIX}.{aggregate}.{aggregate_id}"


def aggregate_wildcard(aggregate: str) -> str:
    """All instances of one aggregate family, e.g. `fleet.evt.device.*`."""
    return f"{EVENTS_PREFIX}.{aggregate}.*"


def parse_event_subject(subject: str) -> tuple[str, str]:
    """(aggregate, aggregate_id) of an event subject."""
    _, _, aggregate, aggregate_id = subject.split(".", 3)
    return aggregate, aggregate_id


def command_subject(service: str, command: str) -> str:
    """`fleet.cmd.<service>.<command>`, e.g. `fleet.cmd.rollout.start`."""
    return f"{COMMANDS_PREFIX}.{service}.{command}"


def heartbeat_subject(site: str, device: str) -> str:
    """`fleet.hb.<site>.<device>`: core NATS, never stored."""
    return f"{HEARTBEATS_PREFIX}.{site}.{device}"


def desired_key_subject(device: str) -> str:
    """The subject a KV put to the desired-state bucket lands on, for core subscriptions."""
    return f"$KV.{DESIRED_BUCKET}.{device}"
