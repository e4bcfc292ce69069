# Two commands matter: `make demo` and `make test` (what CI runs via .ci/run).
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: demo test bench lint

$(VENV)/bin/relaypacs:
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -e .

demo: $(VENV)/bin/relaypacs
	$(VENV)/bin/relaypacs demo

# pytest exits 5 when it collected no test at all: that is a failure here, not a pass.
test:
	bash .ci/setup.sh
	$(PYTHON) -m pytest -q -m "not bench"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench:
	$(PYTHON) -m pytest -q -m bench tests/bench -s

lint:
	$(VENV)/bin/ruff check .
