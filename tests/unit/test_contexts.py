"""`fleet context`: named deployments saved privately, selected, and layered under flags and
FLEET_* variables (and over a local endpoints.json); `fleet up` ignores them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shared import contexts
from shared.config import load_settings
from shared.errors import Invalid, NotFound


def fleet(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "FLEET_CONTEXT"}
    environment.update({"FLEET_CONFIG_DIR": str(config), **(env or {})})
    return subprocess.run([sys.executable, "-m", "fleet", *args], capture_output=True, text=True,
                          env=environment, check=False)


def test_contexts_are_saved_privately_and_layered_under_flags_and_env(tmp_path: Path) -> None:
    config = tmp_path / "config"
    creds = tmp_path / "alice.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    added = fleet(config, "context", "add", "prod", "--nats-url", "tls://nats.prod:4222", "--nats-creds", str(creds),
                  "--api-url", "https://fleet.prod", "--api-token-file", str(token), "--use", "--json")
    assert added.returncode == 0, added.stderr
    shown = json.loads(added.stdout)
    assert shown["current"] and shown["api_token"] == "(set)" and "secret-token" not in added.stdout
    assert fleet(config, "context", "add", "lab", "--nats-url", "nats://lab:4222").returncode == 0
    listed = json.loads(fleet(config, "context", "list", "--json").stdout)
    assert [(c["name"], c["current"]) for c in listed] == [("lab", False), ("prod", True)]
    for path in (config, config / "contexts"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((config / "contexts" / "prod.json").stat().st_mode) == 0o600

    env = {"FLEET_CONFIG_DIR": str(config)}
    chosen = load_settings({}, env=env, context=contexts.selected_settings(None, env))
    assert (chosen.nats_url, chosen.api_url, chosen.api_token) == ("tls://nats.prod:4222", "https://fleet.prod",
                                                                   "secret-token")
    assert chosen.nats_creds == str(creds.resolve())
    other = load_settings({}, env=env, context=contexts.selected_settings("lab", env))
    assert other.nats_url == "nats://lab:4222" and other.api_url is None
    overridden = load_settings({"api_url": "https://flag"}, env={**env, "FLEET_NATS_URL": "nats://env:4222"},
                               context=contexts.selected_settings(None, env))
    assert (overridden.nats_url, overridden.api_url) == ("nats://env:4222", "https://flag")

    assert fleet(config, "context", "use", "lab").returncode == 0
    assert contexts.current(config) == "lab"
    assert fleet(config, "context", "rm", "lab").returncode == 0
    assert contexts.current(config) is None and contexts.names(config) == ["prod"]


def test_bad_names_and_unknown_contexts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(Invalid):
        contexts.save(tmp_path, "../escape", contexts.Context())
    with pytest.raises(NotFound):
        contexts.use(tmp_path, "nowhere")
    refused = fleet(tmp_path, "context", "show", "nowhere", "--json")
    assert refused.returncode == 3 and json.loads(refused.stdout)["error"]["code"] == "not_found"
    missing = fleet(tmp_path, "context", "add", "x", "--nats-creds", str(tmp_path / "absent"))
    assert missing.returncode == 2 and "absent" in missing.stderr


def test_a_context_takes_the_place_of_a_local_endpoints_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "endpoints.json").write_text(json.dumps({"nats_url": "nats://127.0.0.1:1", "api_url": "http://local"}))
    env = {"FLEET_DATA_DIR": str(data)}
    assert load_settings({}, env=env).api_url == "http://local"
    remote = load_settings({}, env=env, context={"nats_url": "tls://remote:4222"})
    assert remote.nats_url == "tls://remote:4222" and remote.api_url is None
