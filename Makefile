# The two commands of the README: `make bench` and `make test`.
# Both create .venv on first use (pinned versions from requirements-dev.txt,
# torch 2.13.0 as the CPU build) and reuse it afterwards.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: bench test test-all benchmarks venv clean

venv: $(STAMP)

# Rebuilt only when the pins or the project metadata change.
$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# pytest-benchmark suites, report in reports/benchmarks.json; then
# `$(PY) -m bench.ci_compare reports/benchmarks.json` checks it (see .ci/run).
benchmarks: $(STAMP)
	mkdir -p reports
	$(PY) -m pytest -q -p no:cacheprovider tests/benchmarks --benchmark-only \
		--benchmark-json=reports/benchmarks.json --benchmark-sort=name \
		--benchmark-columns=min,median,max,rounds

clean:
	rm -rf $(VENV) reports .pytest_cache .benchmarks
