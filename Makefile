# Kaon: `make demo` sets up and runs the seed example; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

RAY_STAMP := $(VENV)/.installed-ray

.PHONY: install install-ray demo test test-fast lint check bench down clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $(STAMP)

# Ray is an extra: the demo needs only Python; the tests run Kaon on real Ray clusters.
$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[train,dev,ray]"
	touch $(RAY_STAMP)

install: $(STAMP)

install-ray: $(RAY_STAMP)

demo: install
	$(PY) scripts/demo.py

test: install-ray
	$(PY) -m pytest -n 2 -q

# The quick loop: no multi-process end-to-end tests and no Ray clusters.
test-fast: install
	$(PY) -m pytest -n 2 -q -m "not e2e and not ray"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

check: lint test

bench: install
	$(PY) benchmarks/jobs_latency.py

down: install
	$(VENV)/bin/kaon down

clean:
	rm -rf $(VENV) build *.egg-info
