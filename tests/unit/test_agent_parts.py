"""The agent's and the simulator's pure parts: no server needed."""

from __future__ import annotations

from fleet_agent.agent import parse_metrics

from services.agent.simulator import FleetSimulator, SimOptions


def test_parse_metrics() -> None:
    assert parse_metrics("error_rate=0.02\nnoise\n latency_ms = 12 \nbad=x\n=3\n") == {
        "error_rate": 0.02, "latency_ms": 12.0}


def test_same_seed_same_story() -> None:
    def story(seed: int) -> tuple[list[list[int]], list[tuple[bool, bool]]]:
        sim = FleetSimulator.__new__(FleetSimulator)  # pure parts only: no connection needed
        sim.options = SimOptions(devices=500, sites=7, interval=1.0, offline=0.05, tamper=0.05, seed=seed)
        return sim.slots(), [sim.fate(i, r) for i in range(500) for r in range(20)]

    assert story(3) == story(3)
    assert story(3) != story(4)
    slots, fates = story(3)
    assert sorted(i for slot in slots for i in slot) == list(range(500))
    offline = sum(o for o, _ in fates) / len(fates)
    assert 0.03 < offline < 0.07
