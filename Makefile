# Two commands for a fresh machine with python3: `make bench` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: setup bench test test-slow benchmark baseline docs lint clean clean-cache

setup: $(STAMP)

# torch first, exactly 2.13.0 (a local CPU build; anything else downloads GBs); crypten and
# orion-fhe (Lattigo, for `lattigo`) without their declared deps, which would pull another torch
# or cannot install here (see ../shared/STACK.md); lattigo loads only orion's shared library.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(PIP) -U "pip>=24"
	$(PIP) torch==2.13.0
	$(PIP) -r requirements.lock
	$(PIP) --no-deps crypten==0.4.1 orion-fhe==1.0.2
	$(PIP) --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

bench: setup
	$(BIN)/encbench

test: setup
	$(BIN)/pytest

# the report tests drive Debian's Chromium headless (installed here if missing; needs root)
test-slow: setup
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium)
	$(BIN)/pytest -m slow

benchmark: setup
	$(BIN)/pytest tests/benchmarks --benchmark-enable --benchmark-autosave

# the quick sweep again into results/baseline/ (commit it after an intended change), and the pages it feeds
baseline: setup
	$(BIN)/encbench-docs --measure baseline

# docs/metrics.md, docs/results.md and README's headline, from the code and the committed results
docs: setup
	$(BIN)/encbench-docs

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) reports .pytest_cache .benchmarks

# compiled TFHE circuits, keys (GBs) and the cost model's calibration, outside the repository
clean-cache:
	rm -rf $${ENCBENCH_CACHE:-$$HOME/.cache/encbench}
