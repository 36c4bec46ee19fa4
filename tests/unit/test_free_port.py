"""free_port: never the same port twice to one process (fleet up gives each part its own port
before any binds it: two parts once got the same metrics port and one crash-looped), and never
from the kernel's ephemeral range, where an outgoing connection may take it first."""

from __future__ import annotations

from shared.embedded import _ephemeral_range, free_port


def test_ports_are_unique_and_outside_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
    low, high = _ephemeral_range()
    assert not [p for p in ports if low <= p <= high]
