"""The snapshot service's reaction to rollouts: a completed rollout marks its snapshot known-good
for the rollout's target (DESIGN §6). It follows `fleet.evt.rollout.*` from the start of the log
(the snapshot and target come from the rollout's RolloutStarted); the mark is keyed by the
RolloutCompleted event's id, so replaying after a restart appends nothing twice."""

from __future__ import annotations

import logging

from services.snapshot.handlers import Snapshots
from shared.commands import Context
from shared.eventlog import EventLog
from shared.events.rollout import RolloutCompleted, RolloutStarted
from shared.subjects import aggregate_wildcard
from shared.times import utcnow

log = logging.getLogger(__name__)


async def follow_rollouts(snapshots: Snapshots, eventlog: EventLog) -> None:
    """Mark snapshots known-good as rollouts complete, forever."""
    started: dict[str, RolloutStarted] = {}
    async for recorded in eventlog.replay(1, subjects=aggregate_wildcard("rollout"), follow=True):
        event = recorded.event
        if isinstance(event, RolloutStarted):
            started[event.rollout_id] = event
        elif isinstance(event, RolloutCompleted) and event.rollout_id in started:
            spec = started[event.rollout_id]
            try:
                await snapshots.on_rollout_completed(spec.snapshot_id, spec.target, spec.rollout_id,
                                                     recorded.envelope.id, Context(now=utcnow()))
            except Exception:  # isolated: a reaction failure must not stop the service
                log.exception("could not mark %s known-good after rollout %s", spec.snapshot_id,
                              spec.rollout_id)
