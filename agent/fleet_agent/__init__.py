"""The Fleetplane device agent, a distribution of its own (`fleetplane-agent`, DESIGN §5).

It owns the device side of the wire contract (`fleet_agent.contract`, `fleet_agent.confighash`):
the control plane imports those definitions from here rather than declaring its own, so the
device and the server cannot disagree. Nothing in this package imports the control plane."""

AGENT_VERSION = "fleet-agent/0.2"
