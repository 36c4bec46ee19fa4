"""One version source: `fleet --version` prints pyproject.toml's version."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_fleet_version_is_the_project_version() -> None:
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = subprocess.run([sys.executable, "-m", "fleet", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"fleet {expected}"
