"""`systemd-analyze verify` on every unit shipped in deploy/systemd/ (DESIGN §15), offline: the
units go into a scratch root beside a copy of the host's own unit directory, with the programs
the installation docs put in place (docs/devices.md) as stand-ins, so that a unit naming a
program nobody installs still fails. Debian's `systemd` package provides systemd-analyze (.ci/run
installs it where it is missing); without it this test is skipped."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted(p for p in (ROOT / "deploy" / "systemd").iterdir() if p.suffix in {".service", ".path", ".timer",
                                                                                   ".socket", ".target"})
HOST_UNITS = Path("/usr/lib/systemd/system")
# What the documented installation puts on a host (docs/devices.md, deploy/README.md).
INSTALLED = ["/usr/local/bin/fleet-agent", "/usr/local/bin/fleet", "/usr/local/libexec/fleet/apply",
             "/usr/local/bin/nats-server"]
ANALYZE = shutil.which("systemd-analyze")


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if ANALYZE is None or not HOST_UNITS.is_dir():
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for program in INSTALLED:
        path = root / program.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, units / unit.name)
    return root


def test_units_are_shipped() -> None:
    assert {"fleet-agent.service", "fleet-agent-apply.path", "fleet-agent-apply.service"} <= {u.name for u in UNITS}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verify_passes(unit: Path, scratch_root: Path) -> None:
    assert ANALYZE is not None
    done = subprocess.run([ANALYZE, "verify", f"--root={scratch_root}", unit.name], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_a_unit_naming_a_program_not_installed_fails(scratch_root: Path) -> None:
    """The check can fail: the same agent unit pointing at a program that is not there."""
    assert ANALYZE is not None
    broken = scratch_root / "etc/systemd/system/fleet-agent-broken.service"
    broken.write_text((ROOT / "deploy/systemd/fleet-agent.service").read_text().replace(
        "/usr/local/bin/fleet-agent", "/usr/local/bin/no-such-agent"))
    try:
        done = subprocess.run([ANALYZE, "verify", f"--root={scratch_root}", broken.name], capture_output=True,
                              text=True, timeout=60, check=False)
    finally:
        broken.unlink()
    assert done.returncode != 0 and "no-such-agent" in done.stderr
