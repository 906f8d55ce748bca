# One-command set-up: each target builds .venv on its own (torch==2.13.0 first, then the
# package with every extra), so `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test test-fast check bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)          ## the main job: quick benchmark, verification and figures into results/
	$(BIN)/convex-attention demo --out results

# pytest exits 5 when no test ran: that fails this target (and CI) like any failure.
test: $(STAMP)          ## the whole test suite, slow end-to-end tests included (what CI runs)
	$(BIN)/python -m pytest -q

check: $(STAMP)         ## lint (ruff) and types (mypy on the core and the floor), as CI runs them
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

test-fast: $(STAMP)     ## everything but the end-to-end runs (under a minute)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)         ## the core speed targets at full size
	$(BIN)/python benchmarks/bench_core.py --out results/bench_core

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis *.egg-info
