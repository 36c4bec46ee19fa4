"""deploy/kubernetes checked offline (DESIGN §15): every overlay rendered by `kubectl kustomize`,
each built-in object validated against the Kubernetes schema (kubernetes-validate bundles it),
the CloudNativePG and cert-manager objects against their CRDs' schemas, every pod against Pod
Security "restricted", and the shape the operations guide promises (one Deployment shape for the
parts, `fleet init` as a Job, the API on the read-only database role, network policies)."""

from __future__ import annotations

import copy
import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fleet.supervisor import PARTS
from shared.config import Settings
from tests.support.tools import require

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
DATA = ROOT / "tests" / "data"
KUBERNETES_VERSION = "1.33"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
CRD_SCHEMAS = {
    ("postgresql.cnpg.io/v1", "Cluster"): "cnpg-cluster-v1.schema.json",
    ("cert-manager.io/v1", "Certificate"): "cert-manager-certificate-v1.schema.json",
    ("cert-manager.io/v1", "Issuer"): "cert-manager-issuer-v1.schema.json",
}
# Pod Security "restricted" (kubernetes.io/docs/concepts/security/pod-security-standards): the
# volume types it allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    require(kubectl is not None, "kubectl is not on PATH: `apt-get install -y kubectl` (Debian's package, as "
                                 ".ci/run does) to render and validate the Kubernetes overlays")
    assert kubectl is not None
    out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True,
                         text=True, check=True).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
            for d in docs if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")}


def validate(doc: dict[str, Any]) -> None:
    schema_file = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema_file is None:  # strict: unknown fields refused
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        return
    schema = json.loads((DATA / schema_file).read_text())
    jsonschema.validate(doc, schema)
    unknown = _unknown_keys(doc["spec"], schema["properties"]["spec"])
    assert unknown == [], f"{doc['kind']}/{doc['metadata']['name']}: fields the CRD does not have: {unknown}"


def _unknown_keys(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys of `value` its (structural) schema does not name: a CRD schema lets them through,
    and the API server would silently prune them."""
    if not isinstance(value, dict) or "properties" not in schema:
        if isinstance(value, list) and "items" in schema:
            return [k for item in value for k in _unknown_keys(item, schema["items"], path + "[]")]
        return []
    unknown = []
    for key, item in value.items():
        if key not in schema["properties"]:
            unknown.append(f"{path}.{key}")
        else:
            unknown.extend(_unknown_keys(item, schema["properties"][key], f"{path}.{key}"))
    return unknown


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What in a pod spec Pod Security "restricted" refuses (plus our read-only root filesystem)."""
    found = []
    pod = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            found.append(flag)
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    if pod.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        found.append("pod seccompProfile")
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        ctx = container.get("securityContext", {})
        name = container["name"]
        if ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot")
        if ctx.get("runAsUser", pod.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation")
        if ctx.get("privileged"):
            found.append(f"{name}: privileged")
        if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
            found.append(f"{name}: capabilities not dropped")
        if set(ctx.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added")
        if any(p.get("hostPort") for p in container.get("ports", [])):
            found.append(f"{name}: hostPort")
        if ctx.get("readOnlyRootFilesystem") is not True:
            found.append(f"{name}: writable root filesystem")
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid(overlay: str) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        validate(doc)


def test_the_schema_checks_can_fail() -> None:
    docs = render("cluster")
    deployment = copy.deepcopy(next(iter(of_kind(docs, "Deployment").values())))
    deployment["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    certificate = copy.deepcopy(next(iter(of_kind(docs, "Certificate").values())))
    certificate["spec"]["dnsName"] = ["typo"]
    with pytest.raises(AssertionError, match="dnsName"):
        validate(certificate)
    cluster = copy.deepcopy(of_kind(docs, "Cluster")["fleet-db"])
    cluster["spec"]["instances"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate(cluster)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_pod_security_restricted(overlay: str) -> None:
    docs = render(overlay)
    specs = pod_specs(docs)
    assert specs
    for name, spec in specs.items():
        assert restricted_violations(spec) == [], name
    namespace = of_kind(docs, "Namespace")["fleet"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_restricted_check_can_fail() -> None:
    spec = copy.deepcopy(next(iter(pod_specs(render("cluster")).values())))
    spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    del spec["securityContext"]["seccompProfile"]
    assert len(restricted_violations(spec)) == 3


@pytest.mark.parametrize(("overlay", "replicas"), [("cluster", 2), ("single-node", 1)])
def test_every_part_is_the_one_deployment_shape(overlay: str, replicas: int) -> None:
    docs = render(overlay)
    deployments = of_kind(docs, "Deployment")
    assert set(deployments) == {f"fleet-{part}" for part in PARTS}
    shapes = set()
    for name, deployment in deployments.items():
        part = name.removeprefix("fleet-")
        assert deployment["spec"]["replicas"] == replicas, name
        labels = deployment["spec"]["selector"]["matchLabels"]
        assert labels == {"app.kubernetes.io/name": "fleetplane", "app.kubernetes.io/component": part}
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["service", part]
        assert {"configMapRef": {"name": "fleet-config"}} in container["envFrom"]
        creds = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "nats-creds")
        assert creds["secret"]["secretName"] == f"fleet-nats-{part}"
        if part == "api":
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
        else:
            expected = ["python", "-m", "fleet.probe"] + ([] if part == "projections" else [part])
            assert container["readinessProbe"]["exec"]["command"] == expected
        # what is the same for every part comes from the one shape
        shapes.add(json.dumps({k: container[k] for k in ("image", "securityContext", "resources")}, sort_keys=True))
    assert len(shapes) == 1
    budgets = of_kind(docs, "PodDisruptionBudget")
    assert set(budgets) == (set(deployments) if replicas > 1 else set())


def test_each_part_gets_the_least_database_role() -> None:
    docs = render("cluster")
    env = {name.removeprefix("fleet-"): {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
           for name, d in of_kind(docs, "Deployment").items()}
    for part, variables in env.items():
        if part not in ("projections", "api"):
            assert "FLEET_DATABASE_URL" not in variables, part  # services need no database
    assert env["projections"]["FLEET_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "fleet-db-app"
    assert env["api"]["FLEET_DATABASE_URL"]["value"].startswith("postgresql://fleet_reader@")
    assert env["api"]["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "fleet-db-reader"
    cluster = of_kind(docs, "Cluster")["fleet-db"]
    (reader,) = cluster["spec"]["managed"]["roles"]
    assert reader["name"] == "fleet_reader" and not reader.get("superuser")
    grants = " ".join(cluster["spec"]["bootstrap"]["initdb"]["postInitApplicationSQL"])
    assert "GRANT SELECT ON TABLES TO fleet_reader" in grants and "INSERT" not in grants


def test_init_runs_as_a_job_with_the_only_admin_identity() -> None:
    docs = render("cluster")
    (job,) = of_kind(docs, "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "init"
    secrets = {v["secret"]["secretName"] for d in docs if d["kind"] in ("Deployment", "Job")
               for v in d["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert "fleet-nats-admin" in secrets
    admin_users = [n for n, d in {**of_kind(docs, "Deployment"), **of_kind(docs, "Job")}.items()
                   if any(v.get("secret", {}).get("secretName") == "fleet-nats-admin"
                          for v in d["spec"]["template"]["spec"]["volumes"])]
    assert admin_users == ["fleet-init"]


def test_network_policies_cover_every_pod_kind() -> None:
    docs = render("cluster")
    policies = of_kind(docs, "NetworkPolicy")
    selected = [p["spec"]["podSelector"].get("matchLabels", {}) for p in policies.values()]
    assert {"app.kubernetes.io/name": "fleetplane"} in selected
    assert {"app.kubernetes.io/name": "nats"} in selected
    assert {"cnpg.io/cluster": "fleet-db"} in selected
    parts = policies["fleet-parts"]["spec"]
    assert parts["policyTypes"] == ["Ingress", "Egress"]
    database = policies["fleet-db"]["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]
    assert sorted(database["values"]) == ["api", "projections"]  # no other part reaches PostgreSQL


def test_nats_clients_verify_the_server_over_tls() -> None:
    docs = render("cluster")
    config = of_kind(docs, "ConfigMap")["fleet-config"]["data"]
    assert config["FLEET_NATS_URL"].startswith("tls://")
    certificate = of_kind(docs, "Certificate")["fleet-nats-tls"]
    host = config["FLEET_NATS_URL"].removeprefix("tls://").split(":")[0]
    assert host in certificate["spec"]["dnsNames"]
    for name, spec in pod_specs(docs).items():
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "nats-ca")
        assert config["FLEET_NATS_TLS_CA"].startswith(mount["mountPath"]), name
        volume = next(v for v in spec["volumes"] if v["name"] == "nats-ca")
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], name  # never the key


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_config_map_holds_only_real_settings(overlay: str) -> None:
    config = of_kind(render(overlay), "ConfigMap")["fleet-config"]
    fields = set(Settings.__struct_fields__)
    for key in config["data"]:
        assert key.startswith("FLEET_") and key[len("FLEET_"):].lower() in fields, key
    assert config["data"]["FLEET_REPLICAS"] == ("3" if overlay == "cluster" else "1")


def test_the_api_serves_https_with_its_certificate() -> None:
    docs = render("cluster")
    api = of_kind(docs, "Deployment")["fleet-api"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in api["containers"][0]["env"]}
    assert env["FLEET_API_URL"].startswith("https://")
    mount = next(m for m in api["containers"][0]["volumeMounts"] if m["name"] == "api-tls")
    assert env["FLEET_API_TLS_CERT"] == f"{mount['mountPath']}/tls.crt"
    secret = next(v for v in api["volumes"] if v["name"] == "api-tls")["secret"]["secretName"]
    certificate = next(c for c in of_kind(docs, "Certificate").values() if c["spec"]["secretName"] == secret)
    service = of_kind(docs, "Service")["fleet-api"]
    assert "fleet-api.fleet.svc" in certificate["spec"]["dnsNames"]
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "https"}]
    for host in env["FLEET_API_ALLOWED_HOSTS"].split(","):
        assert host in certificate["spec"]["dnsNames"]
