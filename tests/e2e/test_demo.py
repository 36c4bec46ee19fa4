"""The `make demo` story runs to the end with a small fleet, and says what it should."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["COLUMNS"] = "200"
    result = subprocess.run(
        [sys.executable, "-m", "fleet", "--data-dir", str(tmp_path / "demo"), "demo", "--devices", "120",
         "--sites", "6", "--exit"],
        capture_output=True, text=True, timeout=400, env=env, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    expected = [
        "plant-s005",                                         # the fleet registered
        "created press-ctl v1", "created press-ctl v3",      # snapshots
        "+ overrides.plant-s003",                            # the diff shows the per-site override
        "r-v1 completed", "r-v2 completed",                  # two healthy rollouts
        "r-v3 rolled_back",                                  # the unhealthy one rolled back by itself
        "last gate (wave 1): failed", "error_rate p95 = 0.5",  # with the gate's inputs
        "drift ended (converged)",                           # tampering found and reconciled
        "What runs where", "historical, as of",              # now and before v3
        "Sites, worst first", "devices differ",              # site health; the fleet diff since before v3
        "events written to",                                 # the audit export
    ]
    missing = [text for text in expected if text not in out]
    assert not missing, f"missing {missing} in:\n{out[-6000:]}"
    assert "the demo stopped" not in out
