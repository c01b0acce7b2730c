# Every target sets up .venv first if needed (pip, pinned by constraints.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup test test-all test-slurm demo lint

setup: $(VENV)/.installed

# editable_mode=compat puts the repository on sys.path, where Hydra's plugin scan finds
# hydra_plugins/gradbench_sweeper (the default editable finder hides it from pkgutil).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]' --config-settings editable_mode=compat
	touch $@

## test: the default test suite (a few minutes on 2 cores)
test: setup
	$(BIN)/pytest -q

## test-all: default suite plus the tests marked slow (long end-to-end and statistical checks)
test-all: setup
	$(BIN)/pytest -q -m "slow or not slow"

## test-slurm: start a one-node Slurm (root, apt-get), sweep through it, stop it (docs/cluster.md)
test-slurm: setup
	scripts/slurm-local.sh start || { scripts/slurm-local.sh stop; exit 1; }
	GRADBENCH_SLURM_REQUIRED=1 $(BIN)/pytest -q tests/test_slurm.py; \
	  rc=$$?; scripts/slurm-local.sh stop; exit $$rc

## demo: the main job, the toy-suite preset sweep; prints a variance table
demo: setup
	$(BIN)/gradbench run +sweep=toy_variance

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Speed regression suite (benchmarks/speed, pytest-benchmark; docs/speed.md).
# Baselines are saved under .benchmarks/ (git-ignored: timings belong to one machine).
BENCH_THRESHOLD ?= 25%

.PHONY: bench bench-save bench-compare bench-quick

## bench: run the speed suite, print the tables and the target ratios (a few minutes)
bench: setup
	$(BIN)/pytest benchmarks/speed

## bench-save: run the speed suite and save it as the baseline (.benchmarks/*/NNNN_baseline.json)
bench-save: setup
	$(BIN)/pytest benchmarks/speed --benchmark-save=baseline

## bench-compare: fail if a benchmark's min time grew by more than BENCH_THRESHOLD over the latest baseline
bench-compare: setup
	BENCH_THRESHOLD=$(BENCH_THRESHOLD) PYTEST=$(BIN)/pytest benchmarks/speed/compare.sh

## bench-quick: every benchmark run once, untimed (CI: the suite cannot rot)
bench-quick: setup
	$(BIN)/pytest benchmarks/speed -q --benchmark-disable
