"""The config hash of the wire contract (DESIGN §5): sha256, lower-case hex, of the effective
config serialized by RFC 8785, the JSON Canonicalization Scheme (JCS).

JCS sorts keys by their UTF-16 code units, writes no whitespace, writes numbers as ECMAScript
does (`1.0` is `1`, `1e21` is `1e+21`, `-0.0` is `0`) and escapes strings minimally, so an agent
in any language reproduces the hash with a stock JCS library (npm `canonicalize`, Go
`gowebpki/jcs`). The vectors every implementation must pass are in
`docs/contract/config-hash-vectors.json`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import rfc8785


class NotCanonicalizable(ValueError):
    """A value JCS cannot write: an integer beyond ±2**53, NaN or infinity, a non-string key."""


def canonical_bytes(value: Any) -> bytes:
    """The RFC 8785 canonical JSON of `value` (UTF-8)."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise NotCanonicalizable(str(exc)) from exc


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (lower-case hex) of the canonical JSON of an effective config."""
    return hashlib.sha256(canonical_bytes(config)).hexdigest()
