"""What operators type, parsed (canary, waves, fractions, metric gates): defined once with the
command types in `shared.contract.rollout`, named here for the rollout's own modules and tests."""

from shared.contract.rollout import Canary, parse_canary, parse_fraction, parse_metric_gate, parse_waves

__all__ = ["Canary", "parse_canary", "parse_fraction", "parse_metric_gate", "parse_waves"]
