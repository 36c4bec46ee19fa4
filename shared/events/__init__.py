"""Event types, one module per aggregate family. Importing this package registers them all, so
any consumer of the log can decode every known type."""

from shared.events import audit, desired, observed, registry, rollout, snapshot

__all__ = ["audit", "desired", "observed", "registry", "rollout", "snapshot"]
