"""tests.support.tools.require: skips with its reason on a developer's machine, fails in CI."""

from __future__ import annotations

import pytest

from tests.support.tools import require


def test_a_missing_tool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    require(True, "never raised")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install x"):
        require(False, "apt-get install x")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run this test"):
        require(False, "apt-get install x")
