"""What devices exchange with Fleetplane (DESIGN §5): the desired-state value in the KV bucket
`fleet_desired` and the heartbeat published on `fleet.hb.<site>.<device>`.

Defined once, in the agent's distribution (`fleet_agent.contract`), which the control plane
depends on: re-exported here so that services import the contract from `shared/`."""

from __future__ import annotations

from fleet_agent.contract import (
    DESIRED_DECODER,
    DESIRED_ENCODER,
    HEARTBEAT_DECODER,
    HEARTBEAT_ENCODER,
    HEARTBEAT_MAX_BYTES,
    DesiredState,
    EncodedDesiredState,
    Hash,
    Health,
    Heartbeat,
    Metric,
    MetricName,
)

__all__ = ["DESIRED_DECODER", "DESIRED_ENCODER", "HEARTBEAT_DECODER", "HEARTBEAT_ENCODER", "HEARTBEAT_MAX_BYTES",
           "DesiredState", "EncodedDesiredState", "Hash", "Health", "Heartbeat", "Metric", "MetricName"]
