# dlrun: `make run` trains the default experiment, `make test` runs the tests, `make bench`
# measures training speed. Each sets up the virtual environment .venv first if needed.
# The newest Python 3.12+ found (scripts/find_python.sh; jax 0.12), else python3 (3.11: jax 0.10).
PYTHON ?= $(shell scripts/find_python.sh)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-all bench clean

run: $(STAMP)
	$(BIN)/dlrun

# make test: the fast suite (everything but the `slow` and `realdata` markers);
# make test-all: also the slow set, dlrun's commands as subprocesses (what .ci/run runs).
test: $(STAMP)
	$(BIN)/pytest -q --durations=10 -m "not slow and not realdata"

test-all: $(STAMP)
	$(BIN)/pytest -q --durations=20 -m "not realdata"

# torch is the benchmark's peer only, never a dependency of dlrun (2.13.0: a local CPU build here).
bench: $(STAMP)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python benchmarks/bench_epoch.py --json benchmarks/results.json --md benchmarks/results.md

# Reinstall when the package metadata changes. Editable install: code and conf/ edits apply at once.
$(STAMP): pyproject.toml
	@if [ -x $(BIN)/python ] && [ "$$($(BIN)/python -c 'import sys; print(sys.version_info[:2])')" != \
	  "$$($(PYTHON) -c 'import sys; print(sys.version_info[:2])')" ]; then \
	  echo "make: $(VENV) was built with another Python than $(PYTHON): run 'make clean' first" >&2; exit 2; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,sweep,track,music,hmc]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
