"""The agent distribution's own parts, pure: the URL list, jittered backoff, JSON log lines, the
options taken from the environment, and credentials handed in by systemd."""

from __future__ import annotations

import json
import logging
import random
import stat
import sys
from pathlib import Path

import pytest
from fleet_agent import logs
from fleet_agent.agent import DEFAULT_URL, parse_servers, where
from fleet_agent.backoff import Backoff
from fleet_agent.cli import options_from, parser
from fleet_agent.credentials import adopt, jwt_of_creds, lifetime_of, renew_at, replace_jwt

CREDS = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------
"""


def creds_text(jwt: str = "aaa.eyJpYXQiOjEwMDAsImV4cCI6NDAwMH0.sig", seed: str = "SUAFIRST") -> str:
    return CREDS.format(jwt=jwt, seed=seed)


def test_the_url_is_a_comma_separated_list() -> None:
    assert parse_servers("nats://a:4222, nats://b:4222,,nats://c:4222 ") == [
        "nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert parse_servers(None) == parse_servers("") == [DEFAULT_URL]
    assert where("nats://agent:s3cret@nats-1.example.net:4222") == "nats-1.example.net:4222"  # logged: no password


def test_backoff_is_full_jitter_under_a_doubling_window() -> None:
    backoff = Backoff(initial=0.5, cap=8.0, rng=random.Random(1))
    assert [backoff.window(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    waits = [backoff.next_wait() for _ in range(7)]
    assert all(0 <= w <= backoff.window(n) for n, w in enumerate(waits))
    assert backoff.attempt == 7
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.window(10_000) == 8.0  # no overflow however long the outage


def test_a_fleet_does_not_retry_in_lock_step() -> None:
    """10,000 devices losing the server at once: their first retries spread over the whole window
    (no tenth of it holds more than ~12% of them), where a fixed wait puts all in one instant."""
    firsts = [Backoff(initial=1.0, rng=random.Random(seed)).next_wait() for seed in range(10_000)]
    buckets = [0] * 10
    for wait in firsts:
        buckets[min(9, int(wait * 10))] += 1
    assert max(buckets) < 1_200 and min(buckets) > 800


def test_log_lines_are_json_with_the_common_fields(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = root.handlers[:], root.level
    try:
        logs.setup("info", instance="d-7")
        logging.getLogger("fleet_agent.agent").warning("applied %s", "snap-1")
        logging.getLogger("fleet_agent.agent").debug("not shown")
    finally:
        root.handlers[:], _ = before
        root.setLevel(before[1])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    from shared.logs import JsonLogFormatter  # the services' format: the same keys

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert set(line) == set(json.loads(JsonLogFormatter("svc").format(record)))
    assert {k: line[k] for k in ("level", "logger", "service", "instance", "msg", "trace_id", "span_id")} == {
        "level": "WARNING", "logger": "fleet_agent.agent", "service": "agent", "instance": "d-7",
        "msg": "applied snap-1", "trace_id": None, "span_id": None}
    assert line["at"].endswith("Z")


def test_options_come_from_the_environment_and_flags_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEET_DEVICE_ID", "d-1")
    monkeypatch.setenv("FLEET_SITE_ID", "s-1")
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("FLEET_NATS_URL", "nats://a:1,nats://b:2")
    monkeypatch.setenv("FLEET_AGENT_INTERVAL", "500ms")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("FLEET_NATS_CREDS", raising=False)
    options = options_from(parser().parse_args(["--site", "s-2"]))
    assert (options.device_id, options.site_id, options.interval) == ("d-1", "s-2", 0.5)
    assert options.servers == ("nats://a:1", "nats://b:2") and options.creds is None
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_credentials_handed_in_by_systemd_are_adopted_into_the_state_dir(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    handed = tmp_path / "credentials"
    handed.mkdir()
    (handed / "device.creds").write_text(creds_text())
    (handed / "device.creds").chmod(0o400)  # systemd's copy is read-only
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(handed))
    monkeypatch.delenv("FLEET_NATS_CREDS", raising=False)
    state = tmp_path / "state"
    args = parser().parse_args(["--device", "d-1", "--site", "s-1", "--state-dir", str(state)])
    options = options_from(args)
    assert options.creds == state / "device.creds"
    assert options.creds.read_text() == creds_text() and stat.S_IMODE(options.creds.stat().st_mode) == 0o600

    # renewed there; a restart keeps the renewed JWT, not systemd's older one
    replace_jwt(options.creds, "bbb.eyJpYXQiOjIwMDAsImV4cCI6NTAwMH0.sig")
    assert options_from(args).creds == state / "device.creds"
    assert jwt_of_creds((state / "device.creds").read_text()) == "bbb.eyJpYXQiOjIwMDAsImV4cCI6NTAwMH0.sig"
    # a re-enrolment (a new key) handed in by systemd replaces the copy
    (handed / "device.creds").chmod(0o600)
    (handed / "device.creds").write_text(creds_text(seed="SUASECOND"))
    assert adopt(handed / "device.creds", state).read_text() == creds_text(seed="SUASECOND")


def test_renewal_is_due_after_two_thirds_of_the_life() -> None:
    life = lifetime_of("aaa.eyJpYXQiOjEwMDAsImV4cCI6NDAwMH0.sig")  # {"iat":1000,"exp":4000}
    assert (life.iat, life.exp) == (1000, 4000)
    assert renew_at(life) == 3000
    assert renew_at(lifetime_of("aaa.eyJpYXQiOjEwMDB9.sig")) is None  # never expires


def test_after_an_outage_each_device_gets_back_at_its_first_retry_after_the_server() -> None:
    from fleet_agent.backoff import attempts_until

    jittered = attempts_until(Backoff(initial=0.5, cap=8.0, rng=random.Random(3)), down_for=10.0)
    assert jittered == sorted(jittered) and jittered[-1] >= 10.0 > jittered[-2]
    fixed = attempts_until(Backoff(initial=0.5, cap=0.5, jitter=False), down_for=10.0)
    assert fixed == [0.5 * k for k in range(1, 21)]  # every 0.5 s: the whole fleet at 10.0 s exactly
    assert attempts_until(Backoff(jitter=False), down_for=0.0) == [0.5]


def test_the_simulator_uses_the_agents_policy() -> None:
    """Simulated devices come back spread over a window with jitter, in lock-step without."""
    from services.agent.simulator import FleetSimulator, SimOptions

    spread: dict[str, set[float]] = {}
    for policy in ("jitter", "fixed"):
        sim = FleetSimulator(None, SimOptions(devices=500, sites=5, reconnect=policy))  # type: ignore[arg-type]  # no connection needed
        sim.reconnected(100.0, 110.0)
        assert all(at >= 110.0 for at in sim.resume_at)
        spread[policy] = {round(at, 3) for at in sim.resume_at}
        assert sim.stats.outages == 1 and len(sim.stats.back[0]) == 500
    assert spread["fixed"] == {110.0}
    assert len(spread["jitter"]) > 400


def test_the_agent_imports_nothing_of_the_control_plane() -> None:
    """The dependency points one way: the server imports the agent's contract, never the reverse
    (the fresh-venv test in tests/e2e/test_agent_device.py proves it installed; this says where)."""
    import ast

    package = Path(__file__).resolve().parents[2] / "agent" / "fleet_agent"
    allowed = {"fleet_agent", "nats", "msgspec", "nkeys", "rfc8785", "__future__"}
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, f"{source.name} imports {name}"
