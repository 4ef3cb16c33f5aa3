# trainsim: `make run` installs and runs the daemon on the embedded default config;
# `make test` installs everything the tests need and runs lint, type checks and the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SERVER_BINARIES := prometheus promtool prometheus-alertmanager amtool chromium

.PHONY: run test test-deps lint typecheck pytest bench docs clean

run: $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check .
	$(BIN)/trainsim run --start.elapsed 10m

test: test-deps $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	$(MAKE) lint typecheck pytest

# Debian's prometheus and prometheus-alertmanager packages (the real servers the tests run)
# and chromium (the browser that loads the live page in the tests).
test-deps:
	@missing=""; for b in $(SERVER_BINARIES); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian's prometheus, prometheus-alertmanager and chromium (missing:$$missing)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-alertmanager chromium >/dev/null; \
	fi

lint:
	$(BIN)/ruff check simulator tests benchmarks dashboards docs

typecheck:
	$(BIN)/mypy simulator

pytest:
	$(BIN)/python -m pytest

# The reference tables of docs/config.md, docs/faults.md and docs/replay.md, from the code's
# declarations; docs/quickstart.md, from what its commands print; and the Grafana dashboards'
# JSON, from dashboards/generate.py (grafana-foundation-sdk, in the test extra).
docs: $(BIN)/python
	$(BIN)/python -m simulator.reference docs/config.md docs/faults.md docs/replay.md
	$(BIN)/python docs/quickstart.py
	$(BIN)/python dashboards/generate.py

bench: $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check .
	$(BIN)/python benchmarks/bench_scrape_engine.py
	$(BIN)/python benchmarks/bench_engine_steps.py
	$(BIN)/python benchmarks/bench_fleet.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
