# One-command set-up: each target builds .venv on its own (torch==2.13.0 first, then the
# package), so `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)          ## the main job: quick benchmark, verification and figures into results/
	$(BIN)/convex-attention demo --out results

test: $(STAMP)          ## the whole test suite (pytest exits non-zero, also when no test ran)
	$(BIN)/python -m pytest -q

bench: $(STAMP)         ## the core speed targets at full size
	$(BIN)/python benchmarks/bench_core.py --out results/bench_core

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis *.egg-info
