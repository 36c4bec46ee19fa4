"""Two or more instances of one service (DESIGN §13): each keeps its aggregates in memory, and
the events another instance appended reach it through the log. `follow_peers` folds them in as
they are stored, so reads (get/list commands) on any instance see every instance's writes, and a
command decided here rarely meets a stale state (when it does, the expected subject sequence
refuses the append and the store reloads, as before). Folding is idempotent per aggregate
sequence, so this instance's own events, already applied by the command that wrote them, are
skipped."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from shared.aggregates import AggregateStore
from shared.eventlog import EventLog
from shared.subjects import aggregate_wildcard, parse_event_subject

log = logging.getLogger(__name__)


async def follow_peers(eventlog: EventLog, stores: Sequence[AggregateStore[Any]], from_seq: int,
                       after: Callable[[int], None] | None = None) -> None:
    """Apply every new event of the stores' families to them, from `from_seq`, forever; `after`
    is told the sequence of each event applied (every earlier one of these families is in)."""
    by_family = {store.aggregate: store for store in stores}
    subjects = [aggregate_wildcard(family) for family in by_family]
    async for recorded in eventlog.replay(from_seq, subjects=subjects, follow=True):
        aggregate, _ = parse_event_subject(recorded.subject)
        store = by_family.get(aggregate)
        if store is not None:
            store.apply(recorded)
        if after is not None:
            after(recorded.seq)
