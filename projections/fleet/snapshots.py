"""Point-in-time copies of the fleet read model: a whole `FleetState` at a known log sequence,
compressed, in `pit_snapshots` (keyed by the projection's schema version and the sequence)."""

from __future__ import annotations

import zlib

import asyncpg
import msgspec

from projections.fleet.model import FleetState

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(FleetState)


def encode_state(state: FleetState) -> bytes:
    """Compressed bytes of a state."""
    return zlib.compress(_ENCODER.encode(state), 1)


def decode_state(blob: bytes) -> FleetState:
    """The state of `encode_state` bytes."""
    return _DECODER.decode(zlib.decompress(blob))


async def save(conn: asyncpg.Connection, version: int, seq: int, *, at: str, devices: int, blob: bytes) -> None:
    """Store one copy (a copy of the same version and sequence is the same state: kept once)."""
    await conn.execute(
        "INSERT INTO pit_snapshots (version, seq, at, devices, state) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT DO NOTHING", version, seq, at, devices, blob)
