"""deploy/ checked offline (DESIGN §13): the NATS Helm values against the chart's values.yaml, the
systemd unit against the agent's flags, and the env examples against the settings. (The
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


def test_systemd_unit_runs_the_agent_with_flags_it_has() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # configparser's documented way to keep case
    unit.read_string((DEPLOY / "systemd" / "fleet-agent.service").read_text())
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    exec_start = unit["Service"]["ExecStart"].replace("\\\n", " ")
    assert exec_start.split()[:2] == ["/usr/local/bin/fleet", "agent"]
    help_text = subprocess.run([sys.executable, "-m", "fleet", "agent", "--help"], capture_output=True,
                               text=True, check=True, env={"COLUMNS": "200", "PATH": ""}).stdout
    for flag in re.findall(r"--[a-z-]+", exec_start):
        assert flag in help_text, flag
    env = _env_file(DEPLOY / "env" / "fleet-agent.env.example")
    for variable in re.findall(r"\$\{(\w+)\}", exec_start):
        assert variable in env or variable == "STATE_DIRECTORY", variable
    assert unit["Service"]["Restart"] == "always"


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
    assert variables == set(_env_file(DEPLOY / "env" / "fleet-nats-node.env.example"))
