"""deploy/monitoring/ and the metrics it reads, checked offline: `promtool check rules` and
`promtool test rules` on the alert rules (Debian's prometheus package; .ci/run installs it), the
PrometheusRule equal to rules.yaml, the Pod/ServiceMonitor selecting what deploy/kubernetes runs,
every metric the rules and the Grafana dashboard name exists in the code, every metric the code
exports is documented in docs/monitoring.md, and the exposition of the fleet gauges (pure).

Run as a module, it regenerates prometheus-rule.yaml from rules.yaml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from projections.api import fleet_metrics
from projections.api.schemas import Counts, ProjectionsAnswer, ProjectionState, SiteCounts, SnapshotCounts, Summary
from services.drift.handlers import Stats, stats_families
from shared import metrics
from tests import exposition
from tests.support.tools import require
from tests.unit.test_kubernetes import OVERLAYS, of_kind, render

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


@pytest.fixture
def needs_promtool() -> None:
    require(Path(PROMTOOL).exists(), "promtool is not on PATH: `apt-get install -y prometheus` (Debian's package, "
                                     "as .ci/run does) to check and unit-test the alert rules")
# Metrics the rules read that other exporters provide (kubelet's volume stats).
FOREIGN = {"kubelet_volume_stats_available_bytes", "kubelet_volume_stats_capacity_bytes"}
HEADER = ("# The groups of rules.yaml for the Prometheus Operator; tests/unit/test_monitoring.py keeps the two "
          "equal\n# (regenerate: python -m tests.unit.test_monitoring).\n")


def _summary() -> Summary:
    site = SiteCounts(site_id="north", total=10, online=8, offline=2, ok=7, degraded=1, failed=0, unknown=2,
                      drifted=3, stuck=1)
    return Summary(as_of_seq=5, lag=0, historical=False, at=None, totals=Counts(total=10), by_site=[site],
                   by_snapshot=[SnapshotCounts(snapshot_id="app-v1", total=10)], cells=[])


def _projections(poisoned: int = 0) -> ProjectionsAnswer:
    return ProjectionsAnswer(log_last_seq=12, items=[ProjectionState(
        name="fleet", version=1, generation=1, checkpoint=10, lag=2, applied=10, skipped_unknown=0, rate=0.0,
        state="running", poisoned=poisoned)])


def fleet_exposition() -> str:
    """The fleet families from sample data, as the API renders them."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(fleet_metrics._Families([
        *fleet_metrics.device_families(_summary()),
        *fleet_metrics.rollout_families({"running": 1, "completed": 2}, [
            {"rollout_id": "r-1", "snapshot_id": "app-v2", "status": "paused", "wave": 1, "passed": False},
            {"rollout_id": "r-2", "snapshot_id": "app-v2", "status": "running", "wave": 0, "passed": None}]),
        *fleet_metrics.projection_families(_projections(poisoned=1)),
        *fleet_metrics.storage_families(1000, 2000, 10_000)]))
    return generate_latest(registry).decode()


def known_metrics() -> set[str]:
    """Every metric name (with its sample suffixes) the code exports."""
    names: set[str] = set()
    families = {**exposition.families(generate_latest(REGISTRY).decode()),
                **exposition.families(fleet_exposition()),
                **exposition.families(generate_latest(_only(stats_families(Stats()))).decode())}
    for name, family in families.items():
        if not name.startswith("fleet_"):
            continue
        names.add(name)
        names |= {sample.name for sample in family.samples}
        if family.type == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        if family.type == "counter":
            names.add(f"{name}_total")
    names.add("fleet_read_models_up")
    return names


def test_fleet_gauges_render_the_summary_and_rollouts() -> None:
    families = exposition.families(fleet_exposition())
    devices = families["fleet_devices"]
    for state, value in (("total", 10), ("online", 8), ("offline", 2), ("degraded", 1), ("drifted", 3),
                         ("stuck", 1), ("failed", 0)):
        assert exposition.value(devices, site="north", state=state) == value, state
    assert exposition.value(families["fleet_devices_by_snapshot"], snapshot="app-v1") == 10
    assert exposition.value(families["fleet_rollouts"], status="completed") == 2
    # the read model's wave 1 (counted from 0, as events do) is the second wave: 2, as the API says
    assert exposition.value(families["fleet_rollout_wave"], rollout="r-1", snapshot="app-v2", status="paused") == 2
    assert exposition.value(families["fleet_rollout_gate_passed"], rollout="r-1") == 0
    assert exposition.value(families["fleet_rollout_gate_passed"], rollout="r-2") is None  # no gate yet
    assert exposition.value(families["fleet_projection_poisoned_events"], projection="fleet") == 1
    assert families["fleet_projection_events_applied"].type == "counter"
    assert exposition.value(families["fleet_jetstream_storage_limit_bytes"]) == 10_000
    assert "fleet_jetstream_storage_limit_bytes" not in exposition.families(generate_latest(_only(
        fleet_metrics.storage_families(1, 2, -1))).decode())  # unlimited: no limit to alert on


def _only(families: list[Any]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(fleet_metrics._Families(families))
    return registry


def test_process_metrics_have_help_type_and_buckets() -> None:
    metrics.APPEND_SECONDS.observe(0.003)
    metrics.COMMAND_SECONDS.labels("registry", "add_site").observe(0.01)
    families = exposition.families(generate_latest(REGISTRY).decode())
    buckets = [s for s in families["fleet_append_seconds"].samples if s.name.endswith("_bucket")]
    assert len(buckets) == len(metrics.LATENCY_BUCKETS) + 1
    assert not any(name.endswith("_created") for name in families)
    # no precomputed rates: nothing of ours is named like one
    assert not [name for name in known_metrics() if "rate" in name or "per_second" in name]


def test_readings_add_up_the_live_instances_and_forget_the_gone() -> None:
    """Hot-path counters (the drift service's plain ints) read at scrape time, summed over the
    instances alive in the process."""

    class Source:
        def __init__(self, accepted: int, dropped: dict[str, int]) -> None:
            self.stats = Stats(accepted=accepted, dropped=dropped)

        def readings(self) -> list[Any]:
            return stats_families(self.stats)

    readings = metrics.Readings()
    one, two = Source(5, {"malformed": 1}), Source(7, {"malformed": 2, "oversized": 1})
    readings.add(one)
    readings.add(two)
    families = exposition.families(generate_latest(_only(list(readings.collect()))).decode())
    assert exposition.value(families["fleet_heartbeats_accepted"]) == 12
    assert exposition.value(families["fleet_heartbeats_dropped"], reason="malformed") == 3
    assert exposition.value(families["fleet_heartbeats_dropped"], reason="oversized") == 1
    del two
    import gc

    gc.collect()
    families = exposition.families(generate_latest(_only(list(readings.collect()))).decode())
    assert exposition.value(families["fleet_heartbeats_accepted"]) == 5


def test_exposition_checks_can_fail() -> None:
    with pytest.raises(AssertionError, match="HELP"):
        exposition.families("# TYPE x gauge\nx 1\n")
    with pytest.raises(AssertionError, match="label"):
        exposition.families('# HELP x y\n# TYPE x gauge\nx{instance="a"} 1\n')
    with pytest.raises(AssertionError, match="buckets"):
        exposition.families("# HELP h y\n# TYPE h histogram\nh_count 1\nh_sum 1\n")


@pytest.mark.usefixtures("needs_promtool")
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(MONITORING / "rules.yaml")], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.usefixtures("needs_promtool")
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = subprocess.run([PROMTOOL, "test", "rules", "rules-test.yaml"], cwd=MONITORING, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.usefixtures("needs_promtool")
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rule that no longer fires as its test expects fails `promtool test rules`."""
    rules = (MONITORING / "rules.yaml").read_text().replace("fleet:site_offline:ratio > 0.2", "fleet:site_offline:ratio > 0.4")
    (tmp_path / "rules.yaml").write_text(rules)
    shutil.copy(MONITORING / "rules-test.yaml", tmp_path)
    result = subprocess.run([PROMTOOL, "test", "rules", "rules-test.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, check=False)
    assert result.returncode != 0 and "FleetSiteOffline" in result.stdout + result.stderr


def prometheus_rule() -> dict[str, Any]:
    rules = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "fleet", "namespace": "fleet", "labels": {"app.kubernetes.io/name": "fleetplane"}},
            "spec": {"groups": rules["groups"]}}


def test_the_prometheus_rule_carries_rules_yaml() -> None:
    assert yaml.safe_load((MONITORING / "prometheus-rule.yaml").read_text()) == prometheus_rule()


def _exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return exprs


def test_rules_and_dashboard_read_only_metrics_that_exist() -> None:
    known = known_metrics() | FOREIGN
    rules = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    recorded = {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}
    named = {m for expr in _exprs() for m in re.findall(r"\b(?:fleet|kubelet)[a-z_:]*[a-z_]", expr)}
    assert named - known - recorded == set()
    assert recorded <= {m for expr in _exprs() for m in re.findall(r"fleet:[a-z_:]+", expr)}  # each is used


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert graphs and all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in graphs)
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "site"}


def test_every_exported_metric_is_documented() -> None:
    doc = (ROOT / "docs" / "monitoring.md").read_text()
    families = {n for n in known_metrics() if not n.endswith(("_bucket", "_count", "_sum"))}
    missing = sorted(n for n in families if f"`{n}`" not in doc and f"`{n}_total`" not in doc
                     and f"`{n.removesuffix('_total')}_total`" not in doc)
    assert missing == []
    rules = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert [a for a in alerts if f"### {a}" not in doc] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitors_select_what_kubernetes_runs(overlay: str) -> None:
    docs = render(overlay)
    config = of_kind(docs, "ConfigMap")["fleet-config"]["data"]
    port = int(config["FLEET_METRICS_PORT"])
    assert config["FLEET_METRICS_HOST"] == "0.0.0.0"
    pod_monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    excluded = set(pod_monitor["spec"]["selector"]["matchExpressions"][0]["values"])
    assert excluded == {"api"}
    deployments = of_kind(docs, "Deployment")
    assert deployments
    for deployment in deployments.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        if labels["app.kubernetes.io/component"] in excluded:
            assert {"name": "FLEET_METRICS_PORT", "value": "0"} in container["env"]
        else:
            assert {"name": "metrics", "containerPort": port} in container["ports"]
    # the parts serve HTTPS with the certificate whose name the PodMonitor verifies
    tls = pod_monitor["spec"]["podMetricsEndpoints"][0]["tlsConfig"]
    certificate = of_kind(docs, "Certificate")[tls["ca"]["secret"]["name"]]
    assert tls["serverName"] in certificate["spec"]["dnsNames"]
    for deployment in deployments.values():
        if deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] in excluded:
            continue
        pod = deployment["spec"]["template"]["spec"]
        mounted = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        mount = next(m["mountPath"] for m in pod["containers"][0]["volumeMounts"]
                     if mounted.get(m["name"]) == certificate["spec"]["secretName"])
        assert config["FLEET_METRICS_TLS_CERT"] == f"{mount}/tls.crt"
        assert config["FLEET_METRICS_TLS_KEY"] == f"{mount}/tls.key"
    service_monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    api = of_kind(docs, "Service")["fleet-api"]
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= api["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in api["spec"]["ports"]}
    tls = service_monitor["spec"]["endpoints"][0]["tlsConfig"]
    certificate = of_kind(docs, "Certificate")[tls["ca"]["secret"]["name"]]
    assert tls["serverName"] in certificate["spec"]["dnsNames"]
    # the parts' network policy lets the monitoring namespace reach that port
    policy = of_kind(docs, "NetworkPolicy")["fleet-parts"]
    assert {"port": "metrics"} in policy["spec"]["ingress"][0]["ports"]


def test_the_monitoring_kustomization_names_its_files() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    files = [*kustomization["resources"], *kustomization["configMapGenerator"][0]["files"]]
    assert all((MONITORING / f).exists() for f in files)


if __name__ == "__main__":
    (MONITORING / "prometheus-rule.yaml").write_text(
        HEADER + yaml.safe_dump(prometheus_rule(), sort_keys=False, width=120))
