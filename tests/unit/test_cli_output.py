"""`-o json|yaml|wide` on every command that has `--json` (issue 25 item 6): `--json` and `-o json`
print the same bytes, `-o yaml` the same data as YAML, `-o wide` the table uncut; a refusal is
machine-readable under json and yaml, with the error's exit code."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml

from fleet.cli import app
from tests.unit.test_contexts import fleet

LONG = "nats://a-rather-long-host-name.of-a-deployment.example.org:4222"


def test_every_command_with_json_takes_output() -> None:
    import inspect

    def walk(group: typer.Typer) -> list[tuple[str, list[str]]]:
        out = [(str(c.name or c.callback.__name__), list(inspect.signature(c.callback).parameters))  # type: ignore[union-attr,arg-type]
               for c in group.registered_commands]
        for sub in group.registered_groups:
            out += walk(sub.typer_instance)  # type: ignore[arg-type]
        return out

    commands = [(name, params) for name, params in walk(app) if "json_out" in params]
    assert len(commands) > 30
    assert [name for name, params in commands if "_output" not in params] == []


def test_json_yaml_wide_and_refusals(tmp_path: Path) -> None:
    assert fleet(tmp_path, "context", "add", "lab", "--nats-url", LONG, "--api-url", "http://lab:8080").returncode == 0
    as_json = fleet(tmp_path, "context", "list", "--json")
    as_o_json = fleet(tmp_path, "context", "list", "-o", "json")
    assert as_json.returncode == as_o_json.returncode == 0
    assert as_json.stdout == as_o_json.stdout and json.loads(as_json.stdout)[0]["name"] == "lab"
    as_yaml = fleet(tmp_path, "context", "list", "--output", "yaml")
    assert as_yaml.returncode == 0 and yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout)
    table = fleet(tmp_path, "context", "list", env={"COLUMNS": "60"})
    wide = fleet(tmp_path, "context", "list", "-o", "wide", env={"COLUMNS": "60"})
    assert LONG not in table.stdout and LONG in wide.stdout
    refused = fleet(tmp_path, "context", "show", "nowhere", "-o", "yaml")
    assert refused.returncode == 3 and yaml.safe_load(refused.stdout)["error"]["code"] == "not_found"
    bad = fleet(tmp_path, "context", "list", "-o", "xml")
    assert bad.returncode == 2 and "json, yaml, wide" in bad.stderr
