"""deploy/Dockerfile and deploy/requirements.lock checked offline (DESIGN §15): multi-stage, the base
pinned by digest, dependencies installed from the hashed lock, no embedded servers, the OTLP
exporter present, a non-root user; the lock covers every runtime dependency of pyproject.toml at a
version its range admits. (No Docker engine runs here, so the image itself is not built in tests;
`pip install --require-hashes -r deploy/requirements.lock` is what its build stage runs.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()
LOCK = (ROOT / "deploy" / "requirements.lock").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def locked() -> dict[str, Version]:
    return {canonicalize_name(name): Version(version)
            for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^ \\\n]+)", LOCK, re.MULTILINE)}


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_two_stages_from_a_base_pinned_by_digest() -> None:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE, re.MULTILINE))
    bases = [value.split()[0] for op, value in instructions() if op == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        image = args.get(base.strip("${}"), base)
        assert re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", image), f"{image} is not pinned by digest"


def test_dependencies_come_from_the_hashed_lock_and_the_project_without_them() -> None:
    runs = [value for op, value in instructions() if op == "RUN" and "pip install" in value]
    assert any("--require-hashes -r deploy/requirements.lock" in run for run in runs)
    assert all("--require-hashes" in run or "--no-deps" in run for run in runs), runs
    hashed = re.findall(r"^[A-Za-z0-9_.-]+==\S+((?:\s+\\\n\s+--hash=sha256:[0-9a-f]{64})+)", LOCK, re.MULTILINE)
    assert len(hashed) == len(locked()), "every locked package carries its hashes"


def test_the_image_runs_as_a_non_root_user() -> None:
    users = [value for op, value in instructions() if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_no_embedded_servers_and_the_otlp_exporter_in_the_lock() -> None:
    packages = locked()
    for server in PYPROJECT["project"]["optional-dependencies"]["embedded"]:
        assert canonicalize_name(Requirement(server).name) not in packages, server
    for exporter in PYPROJECT["project"]["optional-dependencies"]["otlp"]:
        assert canonicalize_name(Requirement(exporter).name) in packages, exporter


def test_the_lock_holds_every_runtime_dependency_in_its_range() -> None:
    """Of the project and of the agent's distribution, which the image builds from agent/ (it is
    not locked: it is this repository's)."""
    packages = locked()
    agent = tomllib.loads((ROOT / "agent" / "pyproject.toml").read_text())["project"]
    for text in [*PYPROJECT["project"]["dependencies"], *agent["dependencies"]]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(agent["name"]):
            assert any(op == "RUN" and "--no-deps ./agent" in value for op, value in instructions())
            continue
        assert name in packages, f"{name} is not in deploy/requirements.lock: regenerate it (command in its header)"
        assert packages[name] in requirement.specifier, f"{name} {packages[name]} is outside {requirement.specifier}"
