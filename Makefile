# Two commands for a fresh machine with python3: `make bench` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: setup bench test test-slow benchmark baseline lint clean clean-cache

setup: $(STAMP)

# torch first, exactly 2.13.0 (a local CPU build; anything else downloads GBs); crypten without
# its declared deps, which cannot install here (see ../shared/STACK.md).
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(PIP) -U "pip>=24"
	$(PIP) torch==2.13.0
	$(PIP) -r requirements.lock
	$(PIP) --no-deps crypten==0.4.1
	$(PIP) --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

bench: setup
	$(BIN)/encbench

test: setup
	$(BIN)/pytest

test-slow: setup
	$(BIN)/pytest -m slow

benchmark: setup
	$(BIN)/pytest tests/benchmarks --benchmark-enable --benchmark-autosave

baseline: setup
	rm -rf results/baseline
	$(BIN)/encbench run_id=baseline report=false progress=false

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) reports .pytest_cache .benchmarks

# compiled TFHE circuits, keys (GBs) and the cost model's calibration, outside the repository
clean-cache:
	rm -rf $${ENCBENCH_CACHE:-$$HOME/.cache/encbench}
