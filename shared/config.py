"""Settings: one typed Struct, filled from flags, then `FLEET_*` environment variables, then the
data dir's `endpoints.json` (in that order of precedence), read once at start-up (STYLE §10)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from shared.errors import Invalid
from shared.secretfiles import write_private
from shared.times import parse_duration

ENDPOINTS_FILE = "endpoints.json"
SECRETS_DIR = "secrets"
ADMIN_CREDS = "admin.creds"
OPERATOR_CREDS = "operator.creds"
DEFAULT_DATA_DIR = ".fleet"
_DURATIONS = ("heartbeat_interval", "drift_grace", "reconcile_backoff", "flap_window",
              "audit_max_delay", "lease_ttl", "lease_renew", "duty_bound")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a Fleetplane process can be told."""

    data_dir: str = DEFAULT_DATA_DIR
    nats_url: str | None = None
    nats_creds: str | None = None
    command_creds: str | None = None  # the identity commands are sent under (default: nats_creds)
    nats_tls_ca: str | None = None
    database_url: str | None = None
    api_url: str | None = None
    api_token: str | None = None  # bearer token for the query API (else <data-dir>/secrets/api-token)
    api_allowed_hosts: str = ""  # comma-separated Host values the API accepts ("" = its own + loopback)
    api_tls_cert: str | None = None  # PEM certificate chain: the API serves HTTPS (FLEET_API_URL https://)
    api_tls_key: str | None = None  # its private key
    api_database_url: str | None = None  # read-only role for the API (`fleet up` with external PostgreSQL)
    database_passfile: str | None = None  # pgpass file with the PostgreSQL passwords (never in URLs)
    metrics_public: bool = False  # /metrics without a token
    metrics_port: int = 0  # this part's own /metrics (prometheus_client, no token); 0: not served
    metrics_host: str = "127.0.0.1"  # where metrics_port listens (0.0.0.0 in a pod: docs/monitoring.md)
    metrics_tls_cert: str | None = None  # PEM certificate chain: metrics_port serves HTTPS
    metrics_tls_key: str | None = None  # its private key
    heartbeat_interval: float = 10.0
    offline_after: int = 3
    drift_grace: float = 60.0
    reconcile_backoff: float = 5.0
    reconcile_max_tries: int = 5
    flap_window: float = 60.0  # a device whose reports flip flap_changes times within it is flapping
    flap_changes: int = 6  # (0: never); its flips are then no events until it holds still
    drift_partition: str = ""  # "k/N": this drift instance watches partition k of N ("" = all)
    instance: str = ""  # this process's slot, the same across its restarts (shared.lease.instance_name)
    checkpoint_every: int = 25_000  # followed events between two checkpoints of a service's state; 0: none
    audit_every: int = 1000  # events between two signed audit checkpoints (docs/audit.md)
    audit_max_delay: float = 60.0  # longest an event waits for a checkpoint while the log is quiet
    replicas: int = 0  # of FLEET_EVENTS and the buckets; 0 = 3 on a cluster of 3+ servers, else 1
    lease_ttl: float = 6.0  # lease time of one-driver-at-a-time work (shared/lease.py)
    lease_renew: float = 0.0  # seconds between lease renewals; 0: a third of the lease time
    duty_bound: float = 60.0  # longest a part's duty (a rollout tick, the projections' progress) may stall
    log_level: str = "info"

    @property
    def data_path(self) -> Path:
        """The data dir as a Path."""
        return Path(self.data_dir)

    @property
    def secrets_path(self) -> Path:
        """Where `fleet up` keeps keys and credentials (0700)."""
        return self.data_path / SECRETS_DIR


class Endpoints(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What `fleet up` writes to `<data-dir>/endpoints.json` so the CLI finds it without flags."""

    nats_url: str
    nats_tls_ca: str | None = None  # the CA the NATS servers' certificates are verified against
    database_url: str | None = None  # without a password: that is in database_passfile
    database_passfile: str | None = None
    api_url: str | None = None
    pid: int | None = None
    metrics: dict[str, str] = {}  # part -> the URL a Prometheus scrapes for it (docs/monitoring.md)


_FIELDS = set(Settings.__struct_fields__)


def load_settings(flags: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None,
                  context: Mapping[str, Any] | None = None) -> Settings:
    """Settings from flags (None values ignored), FLEET_* env, then a named context
    (shared.contexts) or, without one, the endpoints.json of a local `fleet up`."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    from_env = {
        key[len("FLEET_"):].lower(): value
        for key, value in env.items()
        if key.startswith("FLEET_") and key[len("FLEET_"):].lower() in _FIELDS
    }
    from_context = {k: v for k, v in (context or {}).items() if v is not None and k in _FIELDS}
    data_dir = flags.get("data_dir") or from_env.get("data_dir") or from_context.get("data_dir") or DEFAULT_DATA_DIR
    underneath = from_context if context else read_endpoints(Path(data_dir))
    values: dict[str, Any] = {**underneath, **from_env, **flags}
    values["data_dir"] = str(data_dir)
    for name in _DURATIONS:
        if name in values:
            values[name] = parse_duration(values[name], field=name)
    # `fleet up` keeps the CLI's identities in the data dir (DESIGN §11): admin for the log and
    # identities, an operator named after the local user for commands.
    secrets = Path(data_dir) / SECRETS_DIR
    if not values.get("nats_creds") and (secrets / ADMIN_CREDS).exists():
        values["nats_creds"] = str(secrets / ADMIN_CREDS)
    if not values.get("command_creds"):
        operator = secrets / OPERATOR_CREDS
        values["command_creds"] = str(operator) if operator.exists() else values.get("nats_creds")
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise Invalid(f"bad setting: {exc}", field="settings") from None


def read_endpoints(data_dir: Path) -> dict[str, Any]:
    """The endpoints a running `fleet up` published in this data dir ({} when none)."""
    path = data_dir / ENDPOINTS_FILE
    if not path.exists():
        return {}
    try:
        endpoints = msgspec.json.decode(path.read_bytes(), type=Endpoints)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Invalid(f"{path} is not a valid endpoints file: {exc}", field="data_dir") from None
    return {k: v for k, v in msgspec.structs.asdict(endpoints).items()
            if k in _FIELDS and v is not None}


def write_endpoints(data_dir: Path, endpoints: Endpoints) -> Path:
    """Write endpoints.json atomically, readable only by the owner (it holds no secret: the
    database password is in the pgpass file it names)."""
    return write_private(data_dir / ENDPOINTS_FILE, msgspec.json.format(msgspec.json.encode(endpoints)))

