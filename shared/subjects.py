"""Every NATS subject and JetStream name Fleetplane uses, in one place (DESIGN §1, §3-§5)."""

from __future__ import annotations

# The device's subjects are part of the agent's contract (fleet_agent.contract), defined there once.
from fleet_agent.contract import DESIRED_BUCKET, HEARTBEATS_PREFIX, desired_key_subject, heartbeat_subject

EVENTS_STREAM = "FLEET_EVENTS"
EVENTS_PREFIX = "fleet.evt"
EVENTS_WILDCARD = f"{EVENTS_PREFIX}.>"
COMMANDS_PREFIX = "fleet.cmd"
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


__all__ = ["CHECKPOINTED", "COMMANDS_PREFIX", "DESIRED_BUCKET", "EVENTS_PREFIX", "EVENTS_STREAM", "EVENTS_WILDCARD",
           "HEARTBEATS_PREFIX", "aggregate_wildcard", "checkpoint_bucket", "command_subject", "desired_key_subject",
           "event_subject", "heartbeat_subject", "parse_event_subject"]
