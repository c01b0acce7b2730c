# Every target sets up .venv first if needed (pip, pinned by constraints.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup test test-all demo lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

## test: the default test suite (a few minutes on 2 cores)
test: setup
	$(BIN)/pytest -q

## test-all: default suite plus the long statistical checks (marked slow)
test-all: setup
	$(BIN)/pytest -q -m "slow or not slow"

## demo: the main job, the toy-suite preset sweep; prints a variance table
demo: setup
	$(BIN)/gradbench run +sweep=toy_variance

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
