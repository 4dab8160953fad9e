# The two commands the README opens with: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
RUNSTAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-quick micro clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(RUNSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(RUNSTAMP)

run: $(RUNSTAMP)
	$(BIN)/dtabproxy demo

lint: $(STAMP)
	$(BIN)/ruff check dtab config proxy bench tests
	$(BIN)/mypy dtab

test: $(STAMP) lint
	$(BIN)/python -bb -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(RUNSTAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(RUNSTAMP)
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

micro: $(RUNSTAMP)
	$(BIN)/python -m bench.micro

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
