"""deploy/systemd checked as systemd reads it (DESIGN §15): every shipped unit, each part as an
instance of the template with its drop-ins, passes `systemd-analyze verify` with no complaint;
secrets arrive only as systemd credentials; the hardening is there."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.supervisor import PARTS
from shared.embedded import nats_server_binary
from tests.support.tools import require

SYSTEMD = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
# Where the units expect the programs on a host (docs/operations.md), and where they are here.
INSTALLED = {"/opt/fleet/bin/fleet": str(Path(sys.executable).parent / "fleet"),
             "/usr/local/bin/fleet": str(Path(sys.executable).parent / "fleet"),
             "/usr/local/bin/fleet-agent": str(Path(sys.executable).parent / "fleet-agent"),
             "/usr/local/bin/nats-server": str(nats_server_binary()),
             # the device's own apply program (docs/devices.md), run by fleet-agent-apply.service
             "/usr/local/libexec/fleet/apply": "/usr/bin/true"}
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes",
             "RestrictSUIDSGID": "yes", "UMask": "0077"}


def units() -> list[str]:
    """Every unit name to verify: the plain units and the template once per part."""
    names = sorted(p.name for p in [*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.path")] if "@" not in p.name)
    return names + [f"fleet@{part}.service" for part in PARTS]


def verify(tree: Path, unit: str) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze is not on PATH: `apt-get install -y systemd` (as .ci/run does) "
                                 "to verify the shipped units")
    assert analyze is not None
    # SYSTEMD_UNIT_PATH: our copy first (template and drop-ins), then the system's (a trailing ':').
    return subprocess.run([analyze, "verify", unit], check=False, capture_output=True, text=True,
                          env={"SYSTEMD_UNIT_PATH": f"{tree}:", "PATH": "/usr/bin:/bin"})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """deploy/systemd copied, with the programs' host paths pointing at this machine's."""
    shutil.copytree(SYSTEMD, tmp_path, dirs_exist_ok=True)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text = path.read_text()
            for host, here in INSTALLED.items():
                text = text.replace(host, here)
            path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("unit", units())
def test_systemd_analyze_verify_passes(tree: Path, unit: str) -> None:
    result = verify(tree, unit)
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr


def test_the_verification_can_fail(tree: Path) -> None:
    dropin = tree / "fleet@audit.service.d" / "signing-key.conf"
    dropin.write_text(dropin.read_text() + "ProtectSystme=strict\n")  # a typo in a drop-in is seen
    assert "Unknown key" in verify(tree, "fleet@audit.service").stderr
    unit = tree / "fleet-nats.service"
    unit.write_text(unit.read_text().replace(INSTALLED["/usr/local/bin/nats-server"], "/nonexistent/nats-server"))
    assert verify(tree, "fleet-nats.service").returncode != 0


def _service_section(path: Path) -> dict[str, list[str]]:
    """The [Service] keys of a unit, each with every value it is given (keys repeat in units)."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("unit", ["fleet@.service", "fleet-nats.service", "fleet-agent.service"])
def test_secrets_arrive_as_credentials_and_the_unit_is_hardened(unit: str) -> None:
    service = _service_section(SYSTEMD / unit)
    for key, value in HARDENING.items():
        assert service.get(key) == [value], key
    assert service["DynamicUser"] == ["yes"]
    assert service["LoadCredential"], "secrets come as systemd credentials"
    for value in service.get("Environment", []):
        name, _, path = value.partition("=")
        if name.endswith(("_CREDS", "_KEY", "_CERT", "_CA")):
            assert path.startswith("%d/"), f"{name} must point into the credentials directory"


def test_the_template_runs_each_part_by_its_instance_name() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((SYSTEMD / "fleet@.service").read_text())
    assert unit["Service"]["ExecStart"] == "/opt/fleet/bin/fleet service %i"
    help_text = subprocess.run([INSTALLED["/opt/fleet/bin/fleet"], "service", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for part in PARTS:
        assert part in help_text, part


@pytest.mark.parametrize(("unit", "env_file"), [("fleet@.service", "fleet-services.env.example"),
                                                ("fleet-nats.service", "fleet-nats-node.env.example")])
def test_the_env_file_never_overrides_what_the_unit_sets(unit: str, env_file: str) -> None:
    """systemd lets an EnvironmentFile= override Environment=: the shipped example must not carry
    what the unit sets itself (credentials paths, the data dir, the slot's name)."""
    set_by_unit = {value.split("=", 1)[0] for value in _service_section(SYSTEMD / unit).get("Environment", [])}
    example = SYSTEMD.parent / "env" / env_file
    keys = {line.split("=", 1)[0] for line in example.read_text().splitlines() if line and not line.startswith("#")}
    assert set_by_unit and not keys & set_by_unit, keys & set_by_unit
