# Two commands do all the set-up on a fresh machine:
#   make demo   - creates .venv, installs diag (with the local CPU torch) and runs `diag demo`
#   make test   - also installs the test tools (Debian's prometheus, promtool, chromium, tmux, gdb, graphviz), then lints,
#                 type-checks and runs the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch this machine carries as a local CPU wheel; an unpinned torch pulls GBs of CUDA.
TORCH ?= torch==2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast lint bench system-deps clean

$(BIN)/.installed: pyproject.toml setup.py diag/_walk.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)" -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/diag demo

system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v chromium >/dev/null || ! command -v tmux >/dev/null || ! command -v gdb >/dev/null || ! command -v dot >/dev/null; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus chromium tmux gdb graphviz; \
	fi

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(BIN)/.installed system-deps lint
	DIAG_REQUIRE_TOOLS=1 $(BIN)/pytest

# The fast tier: no process, no external tool (tests/conftest.py fails a test that starts one
# without @pytest.mark.e2e); `make test` runs these and the e2e tests.
test-fast: $(BIN)/.installed
	$(BIN)/pytest -m "not e2e"

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
