# One-command set-up: each target builds .venv on its own (torch first, then the package with
# every extra), so `make demo` and `make test` work on a fresh machine.
#
# The torch build is yours to choose, with TORCH (README.md, "Set-up" says what each brings):
#   make demo                    # TORCH=default: torch==2.13.0 from pip's configured index
#   make demo TORCH=cpu          # torch==2.13.0 from PyTorch's CPU-only wheel index
#   make demo TORCH=path/to/torch-2.13.0-...whl   # a wheel you downloaded (or any pip requirement)
# A .venv that exists is kept: `make clean` first to change the build.
# ARGS passes options on to the command of `demo` and `bench`; a second run into the same folder
# is refused (the first run's results are never replaced silently):
#   make demo ARGS=--overwrite   # replace results/ from an earlier demo
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= default
ARGS   ?=
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
TORCH_VERSION     = 2.13.0
PYTORCH_CPU_INDEX = https://download.pytorch.org/whl/cpu

ifeq ($(TORCH),default)
  TORCH_REQUIREMENT = torch==$(TORCH_VERSION)
else ifeq ($(TORCH),cpu)
  TORCH_REQUIREMENT = torch==$(TORCH_VERSION) --index-url $(PYTORCH_CPU_INDEX)
else
  TORCH_REQUIREMENT = $(TORCH)
endif

.PHONY: demo test test-fast test-kernels test-floor test-ceiling check bench clean

# Python writes its bytecode caches (__pycache__/, git-ignored) for every target: where PYTHONDONTWRITEBYTECODE
# is set (this project's machines set it), pytest rewrote and compiled the whole suite in every worker of every
# run, 77-78 s for the fast suite against 63-64 s with the caches (2 workers, 2026-12-07, nothing else running).
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): setup.cfg pyproject.toml
	@echo "make: 1/3 creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "make: 2/3 installing torch first ($(TORCH_REQUIREMENT)); pip is quiet and this is the largest download"
	$(BIN)/python -m pip install --quiet $(TORCH_REQUIREMENT)
	@echo "make: 3/3 installing convex-attention with every extra (cvxpy, cvxpylayers, the [paper], [moreau], [linsat] and [test] extras)"
	$(BIN)/python -m pip install --quiet -e '.[all]'
	@$(BIN)/python -c "import torch; print('make: done; torch', torch.__version__, '(CUDA' if torch.version.cuda else '(CPU only', 'build)')"
	touch $(STAMP)

demo: $(STAMP)          ## the main job: quick benchmark, verification and figures into results/
	$(BIN)/convex-attention demo --out results $(ARGS)

# pytest exits 5 when no test ran: that fails this target (and CI) like any failure.
test: $(STAMP)          ## the whole test suite, slow end-to-end tests included (what CI runs)
	$(BIN)/python -m pytest -q

check: $(STAMP)         ## lint (ruff) and types (mypy on every part: the core, the floor, the command line, the harness and the experiment), as CI runs them
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

test-fast: $(STAMP)     ## everything but the slow end-to-end runs
	$(BIN)/python -m pytest -q -m "not slow"

# torch picks its CPU kernels by the CPU (AVX-512, AVX2, ...), and each rounds its own way: a test
# whose outcome is that rounding passes here and fails on a machine of another make. The solvers'
# tests run again on the portable kernels, which round like none of the vectorised ones.
NUMERICAL_TESTS = tests/test_dual.py tests/test_hessian.py tests/test_exact.py tests/test_cvx.py \
                  tests/test_given_maps.py tests/test_graph.py tests/test_duals.py tests/test_solve.py
test-kernels: $(STAMP)  ## the solvers' tests again on torch's portable CPU kernels (CI runs it after test)
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q $(NUMERICAL_TESTS)

# setup.cfg accepts torch from 2.7 (TORCH_FLOOR's minor release) to 2.15 (TORCH_CEILING's): the fast suite
# runs on each in a .venv of its own, so that both ends are tested claims (2.3-2.6, once accepted, gave wrong
# gradients and errors: ca_rev237; 2.14.1 differentiates clamp_min otherwise than 2.13: ca_rev240). Each
# runs on a Python of its own, so that with `make test` (3.11, setup.cfg's oldest) every Python from
# 3.11 to 3.13 runs the suite once: the floor on PYTHON_FLOOR, the ceiling on PYTHON_CEILING, the newest
# (3.13 changed argparse's "--": ca_rev241).
TORCH_FLOOR = 2.7.1
TORCH_CEILING = 2.15.0
PYTHON_FLOOR ?= python3.12
PYTHON_CEILING ?= python3.13
# $(call test_pinned,VENV,TORCH VERSION,PYTHON): the fast suite in VENV, built if need be, after checking that
# it holds that torch on that Python: its stamp follows setup.cfg only, so a VENV built for another TORCH_FLOOR
# or PYTHON_FLOOR would be reused, and its pass claimed for versions it never ran (ca_rev243)
define test_pinned
	$(MAKE) $(1)/.installed VENV=$(1) TORCH=torch==$(2) PYTHON=$(3)
	@test "$$($(1)/bin/python --version)" = "$$($(3) --version)" || \
	    { echo "make: $(1) holds $$($(1)/bin/python --version), not $(3)'s: rm -r $(1) and run again" >&2; exit 1; }
	@$(1)/bin/python -c "import sys, torch; v = torch.__version__.split('+')[0]; \
	    sys.exit(None if v == '$(2)' else 'make: $(1) holds torch ' + v + ', not $(2): rm -r $(1) and run again')"
	$(MAKE) test-fast VENV=$(1) TORCH=torch==$(2) PYTHON=$(3)
endef

# PIP_NO_CACHE_DIR: the pinned torch releases are CUDA builds on PyPI (about 3 GB of wheels, 6 GB installed
# each); pip's cache would keep a second copy of every wheel, which filled a CI machine's disk (stop 63).
test-floor test-ceiling: export PIP_NO_CACHE_DIR = 1
test-floor:             ## the fast suite again on the oldest torch setup.cfg accepts and Python 3.12, in .venv-floor
	$(call test_pinned,.venv-floor,$(TORCH_FLOOR),$(PYTHON_FLOOR))

# PIP_CONSTRAINT: this venv must hold exactly TORCH_CEILING, which a pip constraint file of the machine's
# would refuse (the project's machines cap torch at 2.14.1, the newest release on their disk); it also sets
# aside any constraint of yours, for this venv only.
test-ceiling: export PIP_CONSTRAINT = /dev/null
test-ceiling:           ## the fast suite again on the newest torch setup.cfg accepts and Python 3.13, in .venv-ceiling
	$(call test_pinned,.venv-ceiling,$(TORCH_CEILING),$(PYTHON_CEILING))

bench: $(STAMP)         ## the core speed targets at full size
	$(BIN)/python benchmarks/bench_core.py --out results/bench_core $(ARGS)

clean:                  ## the environment and caches; results/ is kept (it may hold runs of yours)
	rm -rf $(VENV) .venv-floor .venv-ceiling .pytest_cache .hypothesis *.egg-info
