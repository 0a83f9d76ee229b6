# defi-ws: every command a user or CI runs. `make test` works on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all build test demo bench annotate clean lint typecheck stubtest conformance soak test-all

all: build

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Re-install when packaging or the hot path changes.
$(STAMP): $(PY) pyproject.toml setup.py defi_ws/_core.pyx
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

build: $(STAMP)

test: $(STAMP) lint typecheck stubtest
	$(PY) -m pytest $(PYTEST_ARGS)

conformance: $(STAMP)
	$(PY) -m pytest tests/conformance -q -s

demo: $(STAMP)
	$(PY) -m defi_ws demo

bench: $(STAMP)
	$(PY) bench/run.py

# Ten minutes of random venue faults against one client (tests/test_soak.py).
soak: $(STAMP)
	DEFI_WS_SOAK_S=600 $(PY) -m pytest tests/test_soak.py -q

annotate: $(STAMP)
	mkdir -p build
	$(VENV)/bin/cython -3 -a defi_ws/_core.pyx -o build/_core_annotate.c
	@echo "annotated HTML: build/_core_annotate.html"

lint: $(STAMP)
	$(VENV)/bin/ruff check defi_ws tests bench examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict defi_ws

# The .pyi of the compiled module must match what Cython built.
stubtest: $(STAMP)
	$(PY) -m mypy.stubtest defi_ws._core --allowlist stubtest-allowlist.txt

clean:
	rm -rf $(VENV) build dist *.egg-info defi_ws/_core.c defi_ws/_core.html \
	       defi_ws/_core*.so .pytest_cache .mypy_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
