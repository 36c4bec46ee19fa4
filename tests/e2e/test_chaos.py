"""The short fault-injection run (`benchmarks.chaos`, issue 15): a minute of kill -9 of parts,
nats-server and PostgreSQL, frozen parts and restarts under a live fleet and a stream of commands;
then nothing acknowledged is lost or duplicated, no device is assigned twice by a rollout, every
rollout ends or stands paused, the fleet is whole and the read models equal a fresh rebuild. The
ten-minute run and its figures are in benchmarks/README.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import KINDS, run
from tests.e2e.test_cluster_failover import KILLED_CONNECTIONS

pytestmark = KILLED_CONNECTIONS  # the run kills nats-server under this process's connection


def _tails(logs: Path, lines: int = 30) -> None:
    """The end of every part's log (a failure in CI is read from the test's output alone)."""
    for path in sorted(logs.glob("*.log")):
        print(f"--- {path.name} (last {lines} lines)")
        print("\n".join(line[:300] for line in path.read_text(errors="replace").splitlines()[-lines:]))


@pytest.mark.timeout(600)
async def test_a_minute_of_faults_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    try:
        outcome = await run(tmp_path, seconds=60, devices=200, sites=4, seed=7, say=print)
        print(outcome.table())
        assert set(outcome.faults) == set(KINDS)  # every kind at least once (a shuffled round each)
        assert outcome.not_recovered == []
        assert len(outcome.acked) > 50
        assert outcome.lost == [] and outcome.duplicated == []
        assert outcome.assigned_twice == []
        assert outcome.rollouts and outcome.unsettled == []
        assert outcome.devices_registered == outcome.devices
        assert outcome.models_differ == []
    except BaseException:
        _tails(tmp_path / "fleet" / "logs")
        raise
