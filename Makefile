# The two commands a user needs: `make demo` and `make test`. Each bootstraps .venv by itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-cluster lint unit integration bench clean agent-pyz

$(STAMP): pyproject.toml agent/pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Fleetplane needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ./agent -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fleet demo $(DEMO_ARGS)

test: $(STAMP) lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The failover e2e on a 3-node NATS cluster with two instances of every part, and a device agent
# (installed alone, unprivileged) following that cluster (a few minutes).
test-cluster: $(STAMP)
	$(BIN)/pytest -m cluster tests/e2e/test_cluster_failover.py tests/e2e/test_agent_device.py tests/e2e/test_deploy_without_up.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

bench: $(STAMP)
	$(BIN)/python -m benchmarks.eventlog

# The device agent as one file for devices without pip (docs/devices.md); built for this machine's
# architecture and Python (msgspec and PyNaCl are compiled).
agent-pyz: $(STAMP)
	$(BIN)/shiv --quiet -c fleet-agent -o dist/fleet-agent.pyz --python '/usr/bin/env python3' ./agent

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
