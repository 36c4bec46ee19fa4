"""How a device waits between connection attempts: exponential backoff with full jitter.

After a NATS outage every agent of a fleet loses its connection at the same instant; if they all
retried on a fixed period they would come back in lock-step, one thundering herd per period. Each
wait is drawn uniformly from [0, min(cap, initial * 2**attempt)] ("full jitter"), so the herd
spreads over the whole window and the window widens while the server stays away. The agent uses it
for its first connection and, through nats-py's `reconnect_to_server_handler`, for reconnects; the
simulator draws its devices' reconnect times from the same policy. Pure: the random source is
passed in."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

MAX_CAP = 15.0  # seconds: the widest window at any interval


def cap_for(interval: float) -> float:
    """The widest reconnect window for a device heartbeating every `interval` seconds: half the
    default offline window (3 intervals), at most MAX_CAP — so a device is back before drift
    would call it offline, at a 1 s test interval as at the default 10 s (where it is 15 s)."""
    return min(MAX_CAP, 1.5 * interval)


@dataclass
class Backoff:
    """Waits of a connection that keeps failing; `reset()` once it has succeeded."""

    initial: float = 0.5  # seconds: the window of the first retry
    cap: float = MAX_CAP  # seconds: the widest window (cap_for: half the default offline window)
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    jitter: bool = True  # False: wait the whole window (with initial == cap, a fixed period: what
    #                      agents did before, kept to measure the difference)

    def window(self, attempt: int) -> float:
        """The upper bound of the wait before retry number `attempt` (0-based)."""
        return min(self.cap, self.initial * 2.0 ** min(attempt, 62))

    def next_wait(self) -> float:
        """The wait before the next attempt, and count it."""
        window = self.window(self.attempt)
        wait = self.rng.uniform(0.0, window) if self.jitter else window
        self.attempt += 1
        return wait

    def reset(self) -> None:
        """The connection is up again: the next outage starts from the smallest window."""
        self.attempt = 0


def attempts_until(backoff: Backoff, down_for: float) -> list[float]:
    """For a device that lost its server at 0 and retries by `backoff` while the server stays away
    for `down_for` seconds: the times of its attempts, the last one the first after the server came
    back (it succeeds). What the simulator draws its devices' reconnections from."""
    times: list[float] = []
    at = 0.0
    while not times or at < down_for:
        at += backoff.next_wait()
        times.append(at)
    backoff.reset()
    return times
