"""Effective configuration and its hash (DESIGN §5), and content-derived snapshot ids: one pure
implementation that the drift service and the rollout service use.

The config hash itself (RFC 8785) is the device's contract and is defined in the agent's
distribution (`fleet_agent.confighash`); the form it replaced, msgspec's sorted JSON, is kept
here only to recognise agents that still report it (`hash_aliases`, docs/decisions.md)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec
from fleet_agent.confighash import NotCanonicalizable, canonical_bytes, config_hash

_CANONICAL = msgspec.json.Encoder(order="sorted")


def canonical_json(value: Any) -> bytes:
    """msgspec's sorted JSON (keys sorted at every depth, no whitespace): the content behind
    snapshot ids, and the config hash's form before RFC 8785."""
    return _CANONICAL.encode(value)


def legacy_config_hash(config: Mapping[str, Any]) -> str:
    """The config hash as agents before RFC 8785 compute it: sha256 of msgspec's sorted JSON."""
    return hashlib.sha256(canonical_json(config)).hexdigest()


def hash_aliases(config: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """legacy hash -> RFC 8785 hash of every effective config of a snapshot (its base config and
    each site's), where the two forms differ (a float like 1.0, an exponent, -0.0, a key outside
    the Basic Multilingual Plane). What lets a control plane on the new rule take an agent that
    still reports the old form as converged."""
    aliases: dict[str, str] = {}
    for effective in [dict(config), *(deep_merge(config, override) for override in overrides.values())]:
        try:
            new = config_hash(effective)
        except NotCanonicalizable:
            continue
        old = legacy_config_hash(effective)
        if old != new:
            aliases[old] = new
    return aliases


def current_hash(aliases: Mapping[str, str], reported: str | None) -> str | None:
    """A reported or recorded config hash in the current form (the legacy form of a known config
    becomes its RFC 8785 hash; anything else is itself)."""
    return aliases.get(reported, reported) if reported is not None else None


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


__all__ = ["NotCanonicalizable", "canonical_bytes", "canonical_json", "config_hash", "current_hash", "deep_merge",
           "effective_config", "hash_aliases", "legacy_config_hash", "snapshot_id"]
