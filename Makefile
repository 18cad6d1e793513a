# Kaon: `make demo` sets up and runs the seed example; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

RAY_STAMP := $(VENV)/.installed-ray

.PHONY: install install-ray demo test test-fast lint check bench down clean

# What each step installs is said before it runs: the first run takes minutes. PyTorch,
# the big download, shows pip's progress bar, and is skipped when already installed.
$(STAMP): pyproject.toml
	@echo "==> setting up $(VENV) (minutes the first time; again only when pyproject.toml changes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> [1/3] upgrading pip"
	$(PY) -m pip install -q --upgrade pip
	@echo "==> [2/3] PyTorch 2.13.0, unless installed (a large download: pip shows its progress)"
	$(PY) -c "from importlib.metadata import version as v; raise SystemExit(v('torch').split('+')[0] != '2.13.0')" \
		2>/dev/null || $(PY) -m pip install --progress-bar on "torch==2.13.0"
	@echo "==> [3/3] Kaon and its dependencies (FastAPI, SQLAlchemy, Uvicorn, test tools)"
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $(STAMP)

# Ray and the LLM libraries are extras: the demo needs only Python; the tests (and the type
# check, which reads their types) run Kaon on real Ray clusters and serve real language models.
$(RAY_STAMP): $(STAMP)
	@echo "==> Ray, and the LLM extras (transformers, sentence-transformers, openai) for the tests"
	$(PY) -m pip install -q -e ".[train,dev,ray,llm,s3]"
	touch $(RAY_STAMP)

install: $(STAMP)

install-ray: $(RAY_STAMP)

# `make demo PORT=8570 GATEWAY_PORT=8571` runs it on other ports (scripts/demo.py also reads
# KAON_PORT and KAON_GATEWAY_PORT). Only values given to make on its command line count: a
# PORT exported for something else must not move Kaon.
DEMO_PORTS = $(if $(filter command line,$(origin PORT)),--port $(PORT)) \
	$(if $(filter command line,$(origin GATEWAY_PORT)),--gateway-port $(GATEWAY_PORT))

demo: install
	$(PY) scripts/demo.py $(DEMO_PORTS)

test: install-ray
	$(PY) -m pytest -n 2 -q --durations=15

# The quick loop: no multi-process end-to-end tests and no Ray clusters.
test-fast: install
	$(PY) -m pytest -n 2 -q -m "not e2e and not ray"

lint: install-ray
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
