"""Fleetplane's version: the one source is `version` in pyproject.toml, read from the installed
distribution's metadata (so `fleet --version`, the NATS micro services and the API agree)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def fleet_version() -> str:
    """The installed fleetplane version ("0+unknown" when run from a tree that is not installed)."""
    try:
        return version("fleetplane")
    except PackageNotFoundError:
        return "0+unknown"


VERSION = fleet_version()
