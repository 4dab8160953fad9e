# The two commands the README opens with: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
RUNSTAMP := $(VENV)/.installed

.PHONY: run test test-deps lint bench bench-quick micro clean

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
	$(BIN)/mypy dtab config proxy

# What the suite needs from the system: Debian's chromium for the playground test (the
# test is skipped, saying why, on a machine where it cannot be installed).
test-deps:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null) || \
		echo "test-deps: could not install chromium; the playground test will be skipped"; fi

test: $(STAMP) test-deps lint
	$(BIN)/python -bb -m pytest -q $(PYTEST_ARGS)

bench: $(RUNSTAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(RUNSTAMP)
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

micro: $(RUNSTAMP)
	$(BIN)/python -m bench.micro

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
