"""The drift service: heartbeats in, observed-state events out, reconciliation (DESIGN §5)."""
