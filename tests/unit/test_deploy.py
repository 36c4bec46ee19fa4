"""deploy/ checked offline (DESIGN §13): the NATS Helm values against the chart's values.yaml, the
systemd unit against the agent's settings, and the env examples against the settings. (The
Kubernetes manifests: tests/unit/test_kubernetes.py; the NATS cluster config is run verbatim by
tests/integration/test_cluster.py.)"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DATA = ROOT / "tests" / "data"
KUBERNETES_VERSION = "1.33"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        return [p for key, item in value.items() for p in _paths(item, (*prefix, key))]
    return [prefix]


# Free-form maps of the chart: any key below them is passed through to NATS or Kubernetes.
_FREE_FORM = {"merge", "resources", "topologySpreadConstraints"}


def test_nats_helm_values_set_only_keys_the_chart_has() -> None:
    values = documents(K8S / "nats-values.yaml")[0]
    chart = yaml.safe_load((DATA / "nats-chart-values.yaml").read_text())
    for path in _paths(values):
        node: Any = chart
        for key in path:
            assert isinstance(node, dict) and key in node, f"{'.'.join(path)} is not a value of the NATS chart"
            if key in _FREE_FORM:
                break
            node = node[key]
    assert values["config"]["cluster"]["replicas"] == 3
    assert values["config"]["jetstream"]["enabled"] and values["config"]["jetstream"]["fileStore"]["pvc"]["enabled"]
    assert values["config"]["jetstream"]["merge"]["sync_interval"] == "always"


def test_systemd_unit_runs_the_agent_with_settings_it_has() -> None:
    """The unit runs `fleet-agent` with no arguments: everything comes from the env file, whose
    every variable is one the agent reads (its --help names them), and the credentials from
    LoadCredential= under the name the agent looks for."""
    from fleet_agent.cli import CREDENTIAL_NAME

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # configparser's documented way to keep case
    unit.read_string((DEPLOY / "systemd" / "fleet-agent.service").read_text())
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["ExecStart"] == "/usr/local/bin/fleet-agent"
    assert service["LoadCredential"].split(":")[0] == CREDENTIAL_NAME
    assert service["StateDirectory"] == "fleet-agent" and service["DynamicUser"] == "yes"
    help_text = subprocess.run([sys.executable, "-m", "fleet_agent", "--help"], capture_output=True,
                               text=True, check=True, env={"COLUMNS": "200", "PATH": ""}).stdout
    env = _env_file(DEPLOY / "env" / "fleet-agent.env.example")
    assert "FLEET_NATS_CREDS" not in env  # the credentials come from systemd, not a path in the env
    for variable in env:
        assert variable in help_text, variable
    assert service["Restart"] == "always"


def _env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_service_env_example_holds_only_real_settings() -> None:
    fields = set(Settings.__struct_fields__)
    for key in _env_file(DEPLOY / "env" / "fleet-services.env.example"):
        assert key.startswith("FLEET_") and key[len("FLEET_"):].lower() in fields, key


def test_the_nats_node_env_example_sets_every_variable_of_the_config() -> None:
    config = (DEPLOY / "nats" / "fleet-node.conf").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in config.splitlines())
    variables = set(re.findall(r"\$(FLEET_\w+)", code))
    unit = (DEPLOY / "systemd" / "fleet-nats.service").read_text()
    set_by_unit = set(re.findall(r"^Environment=(FLEET_\w+)=", unit, re.MULTILINE))
    example = set(_env_file(DEPLOY / "env" / "fleet-nats-node.env.example"))
    assert variables == example | set_by_unit
    assert not example & set_by_unit, "an EnvironmentFile overrides the unit's Environment="
