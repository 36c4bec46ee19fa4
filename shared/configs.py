"""Effective configuration and its hash (DESIGN §5), and content-derived snapshot ids: one pure
implementation that the agent, the drift service and the rollout service all use."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec

_CANONICAL = msgspec.json.Encoder(order="sorted")


def canonical_json(value: Any) -> bytes:
    """Canonical JSON: keys sorted at every depth, no whitespace."""
    return _CANONICAL.encode(value)


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of an effective config."""
    return hashlib.sha256(canonical_json(config)).hexdigest()


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` merged over `base`: objects merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def effective_config(
    config: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]], site_id: str
) -> dict[str, Any]:
    """A snapshot's base config deep-merged with the override of the device's site, if any."""
    override = overrides.get(site_id)
    return deep_merge(config, override) if override else dict(config)


def snapshot_id(
    name: str,
    config: Mapping[str, Any],
    artifacts: Mapping[str, str],
    overrides: Mapping[str, Mapping[str, Any]],
    parent_id: str | None = None,
) -> str:
    """Id derived from a snapshot's content: `<name>-<first 12 hex of sha256>`.

    Same content, same id, whatever the key order; description and author are not content."""
    digest = hashlib.sha256(
        canonical_json({"name": name, "config": config, "artifacts": artifacts,
                        "overrides": overrides, "parent": parent_id})
    ).hexdigest()
    prefix = name[:115]
    return f"{prefix}-{digest[:12]}"
