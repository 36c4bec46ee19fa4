"""`fleet simulate`: thousands of simulated device agents in one process (DESIGN §5).

One wildcard core subscription on `$KV.fleet_desired.>` (plus one paged read of the bucket at
start) stands in for every device's own key subscription; heartbeats are spread evenly over the
interval. Knobs: how long an apply takes, applies that fail (by chance, or every one at given
sites), snapshots that come up unhealthy, devices dropping offline for a while, and local
tampering (a device that starts reporting a config hash nobody gave it, until desired state is
put to it again).

Each simulated device reconnects by the agent's own policy (`fleet_agent.backoff`): when the
simulator's connection comes back after an outage, every device resumes heartbeating only at its
first retry after the server returned, its retries drawn with jittered exponential backoff (or,
with `reconnect="fixed"`, every `reconnect_fixed` seconds, as agents did before, to compare).

Deterministic for a seed: which devices tamper, drop offline, and where each device's heartbeat
falls in the interval are pure functions of (seed, device, round), whatever the timing.
`FleetSimulator` is the class the demo, the tests and the benchmarks drive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

from fleet_agent.backoff import Backoff, attempts_until, cap_for
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.commands import CommandClient
from shared.desired import DESIRED_WILDCARD, decode_value, ensure_bucket, get_all_desired
from shared.devices import HEARTBEAT_ENCODER, DesiredState, Heartbeat
from shared.errors import Invalid, Unavailable
from shared.subjects import HEARTBEATS_PREFIX
from shared.times import format_time, utcnow

log = logging.getLogger(__name__)
AGENT_VERSION = "fleet-sim/0.1"
_MASK = (1 << 64) - 1
_SLOT = 0.05  # heartbeats go out in slots of this many seconds


def unit(seed: int, device: int, round_: int, salt: int) -> float:
    """A deterministic number in [0, 1) for (seed, device, round, salt): splitmix64."""
    x = (seed * 0x9E3779B97F4A7C15 + device * 0xBF58476D1CE4E5B9 + round_ * 0x94D049BB133111EB
         + salt * 0x2545F4914F6CDD1D) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    x ^= x >> 31
    return x / 2.0**64


@dataclass
class SimOptions:
    """The simulator's knobs; change them on a running simulator and they apply from the next beat."""

    devices: int = 10_000
    sites: int = 50
    interval: float = 10.0
    apply_delay: float = 0.5
    fail_snapshots: set[str] = field(default_factory=set)  # come up with health `failed`
    fail_sites: set[str] = field(default_factory=set)  # applies fail there: old config stays
    fail_apply: float = 0.0  # chance that any one apply fails (old config stays, health failed)
    offline: float = 0.0  # chance per interval that a device drops offline
    offline_for: int = 5  # intervals it stays away
    tamper: float = 0.0  # chance per interval of a local edit of the config
    seed: int = 0
    prefix: str = "sim"
    register: bool = True
    reconnect: str = "jitter"  # how devices retry after an outage: "jitter" (the agent's) or "fixed"
    reconnect_initial: float = 0.5  # jitter: the first window (doubling up to reconnect_cap)
    reconnect_cap: float | None = None  # None: the agent's cap_for(interval)
    reconnect_fixed: float = 0.5  # fixed: the period (the agent's wait before jitter)

    def backoff(self, rng: random.Random) -> Backoff:
        """The retry policy of one device."""
        if self.reconnect == "fixed":
            return Backoff(self.reconnect_fixed, self.reconnect_fixed, rng, jitter=False)
        cap = self.reconnect_cap or cap_for(self.interval)
        return Backoff(min(self.reconnect_initial, cap), cap, rng)

    def __post_init__(self) -> None:
        if self.devices < 1 or self.sites < 1:
            raise Invalid("need at least one device and one site", field="devices")
        if self.interval <= 0:
            raise Invalid("the interval must be positive", field="interval")
        if self.reconnect not in ("jitter", "fixed"):
            raise Invalid("reconnect is jitter or fixed", field="reconnect")
        for name in ("offline", "tamper", "fail_apply"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise Invalid(f"{name} is a fraction between 0 and 1", field=name)

    def device_id(self, index: int) -> str:
        """Name of simulated device `index`."""
        return f"{self.prefix}-d{index:06d}"

    def site_id(self, index: int) -> str:
        """Name of simulated site `index`."""
        return f"{self.prefix}-s{index:03d}"

    def site_of(self, device: int) -> int:
        """The site index of a device."""
        return device % self.sites


@dataclass
class SimStats:
    """What the simulator did, for tests and benchmarks."""

    heartbeats: int = 0
    applies: int = 0
    failed_applies: int = 0
    went_offline: int = 0
    tampered: int = 0
    tampered_at: dict[str, float] = field(default_factory=dict)  # device -> epoch of the edit
    repaired_at: dict[str, float] = field(default_factory=dict)  # device -> epoch desired came back
    outages: int = 0  # times the simulator's connection was lost and came back
    retries: list[list[float]] = field(default_factory=list)  # per outage: all devices' attempts, s after the loss
    back: list[list[float]] = field(default_factory=list)  # per outage: when each device got back (s after the loss)


class FleetSimulator:
    """Many simulated agents on one NATS connection."""

    def __init__(self, nc: NATS, options: SimOptions) -> None:
        self.nc = nc
        self.options = options
        self.stats = SimStats()
        n = options.devices
        self.ids = [options.device_id(i) for i in range(n)]
        self.index = {name: i for i, name in enumerate(self.ids)}
        self.sites = [options.site_id(options.site_of(i)) for i in range(n)]
        self.subjects = [f"{HEARTBEATS_PREFIX}.{self.sites[i]}.{self.ids[i]}" for i in range(n)]
        self.snapshot: list[str | None] = [None] * n
        self.hash: list[str | None] = [None] * n
        self.health: list[str] = ["ok"] * n
        self.tampered = [False] * n
        self.offline_until = [0] * n
        self.seq = [int(time.time() * 1000)] * n
        self.desired: list[DesiredState | None] = [None] * n
        self.resume_at = [0.0] * n  # monotonic time before which a device is still reconnecting
        self._down_at: float | None = None
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._applies: set[asyncio.TimerHandle] = set()

    # --- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Register (unless told not to), read desired state, start heartbeating."""
        if self.options.register:
            await self.register()
        await ensure_bucket(self.nc)
        self._sub = await self.nc.subscribe(DESIRED_WILDCARD, cb=self._on_value,
                                            pending_msgs_limit=1_000_000, pending_bytes_limit=-1)
        current = await get_all_desired(self.nc)
        for name, value in current.items():
            i = self.index.get(name)
            if i is not None:  # already running it: no apply delay at start-up
                self.desired[i] = value
                self._applied(i, value)
        self._task = asyncio.create_task(self._beat_loop(), name="sim-heartbeats")

    async def stop(self) -> None:
        """Stop heartbeating and following desired state."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for handle in self._applies:
            handle.cancel()
        self._applies.clear()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def register(self) -> None:
        """Add the sites and devices through the registry service (existing ones are fine)."""
        client = CommandClient(self.nc, actor="service:simulator", timeout=30.0)
        try:
            for s in range(min(self.options.sites, self.options.devices)):
                reply = await client.request("registry", "add_site", {"site_id": self.options.site_id(s)})
                if not reply.ok and reply.error is not None and reply.error.code != "conflict":
                    raise Invalid(f"registry refused site {self.options.site_id(s)}: {reply.error.message}",
                                  field="sites")
            refused: list[object] = []
            for start in range(0, self.options.devices, 1000):
                devices = [{"device_id": self.ids[i], "site_id": self.sites[i], "kind": "simulated",
                            "labels": {"sim": self.options.prefix}}
                           for i in range(start, min(start + 1000, self.options.devices))]
                reply = await client.send("registry", "import_devices", {"devices": devices})
                result = reply.result if isinstance(reply.result, dict) else {}
                refused.extend(result.get("refused") or [])
        except Unavailable as exc:
            raise Unavailable(
                f"cannot register the simulated devices: {exc.message}. Start the registry "
                "(`fleet up` or `fleet service registry`), or pass --no-register to simulate "
                "devices that are already registered.", field="registry") from None
        if refused:
            raise Invalid(f"the registry refused {len(refused)} simulated devices, e.g. {refused[:3]}",
                          field="devices")

    # --- desired state ----------------------------------------------------------------------------

    async def _on_value(self, msg: Msg) -> None:
        i = self.index.get(msg.subject[len(DESIRED_WILDCARD) - 1:])
        if i is None:
            return
        value = decode_value(msg.data)
        if value is None:
            return
        self.desired[i] = value
        if self.tampered[i]:
            self.stats.repaired_at.setdefault(self.ids[i], time.time())
        delay = self.options.apply_delay
        if delay <= 0:
            self._applied(i, value)
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def done() -> None:
            self._applies.discard(handle)
            if self.desired[i] is value:  # a newer value supersedes one still being applied
                self._applied(i, value)
        handle = loop.call_later(delay, done)
        self._applies.add(handle)

    def _applied(self, i: int, value: DesiredState) -> None:
        self.stats.applies += 1
        opts = self.options
        if self.sites[i] in opts.fail_sites or (
                opts.fail_apply and unit(opts.seed, i, value.revision, 4) < opts.fail_apply):
            self.stats.failed_applies += 1
            self.health[i] = "failed"  # the old config stays in place
            return
        self.snapshot[i] = value.snapshot_id
        self.hash[i] = value.config_hash
        self.tampered[i] = False
        self.health[i] = "failed" if value.snapshot_id in self.options.fail_snapshots else "ok"

    def tamper_with(self, i: int) -> None:
        """Edit device `i`'s config locally: it reports a hash nobody gave it from now on."""
        if self.hash[i] is None or self.tampered[i]:
            return
        self.tampered[i] = True
        self.hash[i] = f"tampered-{self.hash[i]}"[:64]
        self.stats.tampered += 1
        self.stats.tampered_at[self.ids[i]] = time.time()
        self.stats.repaired_at.pop(self.ids[i], None)

    # --- heartbeats -------------------------------------------------------------------------------

    def slots(self) -> list[list[int]]:
        """Devices by heartbeat slot: where in the interval each one reports (seeded)."""
        count = max(1, round(self.options.interval / _SLOT))
        slots: list[list[int]] = [[] for _ in range(count)]
        for i in range(self.options.devices):
            slots[int(unit(self.options.seed, i, 0, 1) * count)].append(i)
        return slots

    async def _beat_loop(self) -> None:
        slots = self.slots()
        slot_len = self.options.interval / len(slots)
        started = time.monotonic()
        k = 0
        while True:
            due = started + k * slot_len
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            round_, slot = divmod(k, len(slots))
            at = format_time(utcnow())
            now = self._track_connection()
            resume_at = self.resume_at
            for i in slots[slot]:
                if resume_at[i] <= now:
                    await self._beat(i, round_, at)
            k += 1
            if slot == len(slots) - 1 or k % 20 == 0:
                await self.nc.flush()

    def _track_connection(self) -> float:
        """Notice an outage of the simulator's connection and, once it is over, when each device
        gets back (`reconnected`); returns the monotonic now."""
        now = time.monotonic()
        if not self.nc.is_connected:
            if self._down_at is None:
                self._down_at = now
        elif self._down_at is not None:
            self.reconnected(self._down_at, now)
            self._down_at = None
        return now

    def reconnected(self, down_at: float, up_at: float) -> None:
        """The server was away from `down_at` to `up_at` (monotonic): each device comes back at its
        own first retry after `up_at`, by the reconnect policy (seeded per outage)."""
        rng = random.Random(hash((self.options.seed, self.stats.outages)))
        backoff = self.options.backoff(rng)
        back: list[float] = []
        tries: list[float] = []
        for i in range(self.options.devices):
            times = attempts_until(backoff, up_at - down_at)
            self.resume_at[i] = down_at + times[-1]
            back.append(times[-1])
            tries.extend(times)
        self.stats.outages += 1
        self.stats.back.append(back)
        self.stats.retries.append(tries)

    def fate(self, i: int, round_: int) -> tuple[bool, bool]:
        """Whether device `i` drops offline, and whether it is tampered with, in a round: a pure
        function of the seed, so the same seed gives the same story."""
        opts = self.options
        offline = bool(opts.offline) and unit(opts.seed, i, round_, 2) < opts.offline
        tamper = bool(opts.tamper) and unit(opts.seed, i, round_, 3) < opts.tamper
        return offline, tamper

    async def _beat(self, i: int, round_: int, at: str) -> None:
        if self.offline_until[i] > round_:
            return
        offline, tamper = self.fate(i, round_)
        if offline:
            self.offline_until[i] = round_ + self.options.offline_for
            self.stats.went_offline += 1
            return
        if tamper:
            self.tamper_with(i)
        self.seq[i] += 1
        health = self.health[i]
        hb = Heartbeat(device_id=self.ids[i], site=self.sites[i], seq=self.seq[i], at=at,
                       snapshot_id=self.snapshot[i], config_hash=self.hash[i],
                       health=health,  # type: ignore[arg-type]  # one of HEALTH by construction; the field is a Literal
                       metrics={"error_rate": 0.5 if health != "ok" else 0.001},
                       agent_version=AGENT_VERSION)
        if not self.nc.is_connected:  # nothing is queued while NATS is away
            return
        await self.nc.publish(self.subjects[i], HEARTBEAT_ENCODER.encode(hb))
        self.stats.heartbeats += 1
