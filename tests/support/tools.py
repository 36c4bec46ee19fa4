"""A test that needs a tool outside Python (Debian's kubectl, systemd, a root shell): on a
developer's machine without it the test is skipped with what to do about it; in CI (CI=true, as
`.ci/run` runs, which installs the tools) it fails instead, so CI never passes a check it skipped."""

from __future__ import annotations

import os

import pytest


def require(present: bool, reason: str) -> None:
    """Go on when `present`; otherwise skip with `reason` (say how to get it), or fail in CI."""
    if present:
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{reason} — CI must run this test (.ci/run installs what it needs)")
    pytest.skip(reason)
