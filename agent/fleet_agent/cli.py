"""`fleet-agent`: run the agent of one device. Every option also comes from the environment
(flags win), so the systemd unit and its env file need no command line of their own:

    FLEET_DEVICE_ID FLEET_SITE_ID FLEET_STATE_DIR (or systemd's STATE_DIRECTORY)
    FLEET_NATS_URL (comma-separated: every node of the cluster) FLEET_NATS_CREDS FLEET_NATS_TLS_CA
    FLEET_APPLY_CMD FLEET_HEALTH_CMD FLEET_AGENT_INTERVAL FLEET_LOG_LEVEL

Under systemd the credentials are handed in with `LoadCredential=device.creds:...`: with no
FLEET_NATS_CREDS the agent takes `$CREDENTIALS_DIRECTORY/device.creds`, copies it into its state
directory the first time, and uses (and renews) that copy from then on."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from fleet_agent import AGENT_VERSION, logs
from fleet_agent.agent import Agent, AgentOptions, BadOption, parse_servers, where
from fleet_agent.credentials import adopt

log = logging.getLogger("fleet_agent")
CREDENTIAL_NAME = "device.creds"  # the name LoadCredential= gives the device's credentials
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from `500ms`, `10s`, `5m`, `1h` or a plain number of seconds."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (use e.g. 500ms, 10s, 5m)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def parser() -> argparse.ArgumentParser:
    """The command line of `fleet-agent`."""
    p = argparse.ArgumentParser(prog="fleet-agent", description="The Fleetplane agent of one device.")
    p.add_argument("--device", default=_env("FLEET_DEVICE_ID"), help="this device's id [FLEET_DEVICE_ID]")
    p.add_argument("--site", default=_env("FLEET_SITE_ID"), help="the device's site [FLEET_SITE_ID]")
    p.add_argument("--state-dir", type=Path, default=_env("FLEET_STATE_DIR", _env("STATE_DIRECTORY")),
                   help="where the effective config (and renewed credentials) are kept [FLEET_STATE_DIR]")
    p.add_argument("--nats-url", default=_env("FLEET_NATS_URL"),
                   help="NATS server URLs, comma separated [FLEET_NATS_URL]")
    p.add_argument("--creds", type=Path, default=_env("FLEET_NATS_CREDS"),
                   help="the device's NATS credentials file [FLEET_NATS_CREDS; under systemd "
                        "$CREDENTIALS_DIRECTORY/device.creds]")
    p.add_argument("--tls-ca", type=Path, default=_env("FLEET_NATS_TLS_CA"), help="CA file [FLEET_NATS_TLS_CA]")
    p.add_argument("--apply-cmd", default=_env("FLEET_APPLY_CMD"),
                   help="run after a new config is written; FLEET_CONFIG names it [FLEET_APPLY_CMD]")
    p.add_argument("--health-cmd", default=_env("FLEET_HEALTH_CMD"),
                   help="run every interval: exit 0 ok, 1 degraded, other failed [FLEET_HEALTH_CMD]")
    p.add_argument("--interval", type=parse_duration,
                   default=parse_duration(_env("FLEET_AGENT_INTERVAL", "10s") or "10s"),
                   help="heartbeat interval, e.g. 10s [FLEET_AGENT_INTERVAL]")
    p.add_argument("--log-level", default=_env("FLEET_LOG_LEVEL", "info"), help="[FLEET_LOG_LEVEL]")
    p.add_argument("--version", action="version", version=AGENT_VERSION)
    return p


def options_from(args: argparse.Namespace) -> AgentOptions:
    """The agent's options from parsed arguments; the credentials adopted into the state dir when
    systemd handed them in."""
    missing = [flag for flag, value in (("--device", args.device), ("--site", args.site),
                                        ("--state-dir", args.state_dir)) if not value]
    if missing:
        raise BadOption(f"missing {', '.join(missing)} (or its environment variable)", field=missing[0])
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    creds: Path | None = args.creds
    handed = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds is None and handed and (Path(handed) / CREDENTIAL_NAME).exists():
        creds = Path(handed) / CREDENTIAL_NAME
    if creds is not None and handed and creds.resolve().is_relative_to(Path(handed).resolve()):
        creds = adopt(creds, state_dir)  # systemd's copy is read-only: renewals go to the state dir
    return AgentOptions(device_id=args.device, site_id=args.site, state_dir=state_dir,
                        apply_cmd=args.apply_cmd, health_cmd=args.health_cmd, interval=args.interval,
                        servers=tuple(parse_servers(args.nats_url)), creds=creds, tls_ca=args.tls_ca)


async def serve(agent: Agent) -> None:
    """Run the agent until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await agent.run()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fleet-agent` console script."""
    args = parser().parse_args(argv)
    logs.setup(args.log_level, instance=args.device or "?")
    try:
        options = options_from(args)
    except (BadOption, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("starting %s for device %s at site %s, servers %s", AGENT_VERSION, options.device_id,
             options.site_id, ",".join(str(where(url)) for url in options.servers))
    asyncio.run(serve(Agent(options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
