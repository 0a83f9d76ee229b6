# defi-ws: every command a user or CI runs. `make test` works on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?= --durations=15

.PHONY: all build test demo gateway-demo bench-gateway bench annotate clean lint typecheck \
        stubtest conformance soak test-all perf-guard perf-baseline perf-guard-if-valgrind docs

all: build

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Re-install when packaging or the hot path changes. Every extra: tests, the demo's
# dashboard, the docs. editable_mode=compat: setuptools' default editable install of a
# flat layout is an import hook that type checkers cannot follow (a user's
# `mypy --strict` would not find defi_ws); compat puts the checkout on sys.path with a
# plain .pth. 'strict' (a link tree; new modules need `make` again) if a setuptools
# without compat refuses it.
EXTRAS := test,demo,docs
$(STAMP): $(PY) pyproject.toml setup.py defi_ws/_core.pyx
	$(PIP) install --quiet -e '.[$(EXTRAS)]' --config-settings editable_mode=compat \
	  || $(PIP) install --quiet -e '.[$(EXTRAS)]' --config-settings editable_mode=strict
	touch $(STAMP)

build: $(STAMP)

test: $(STAMP) lint typecheck stubtest docs perf-guard-if-valgrind
	$(PY) -m pytest $(PYTEST_ARGS)

# `make test` on each of these Pythons that pyenv has (newest patch release), each in
# its own .venv-3.X; stops at the first failure. Logs: build/test-all-3.X.log.
TEST_ALL_VERSIONS ?= 3.10 3.11 3.12 3.13

test-all:
	@mkdir -p build; summary=""; status=0; \
	for v in $(TEST_ALL_VERSIONS); do \
	  full=$$(pyenv versions --bare 2>/dev/null \
	    | awk -F. -v v="$$v" 'NF == 3 && $$1 "." $$2 == v && $$3 ~ /^[0-9]+$$/' \
	    | sort -t. -k3,3n | tail -n 1); \
	  if [ -z "$$full" ]; then \
	    echo "test-all: Python $$v: not installed in pyenv, skipped"; \
	    summary="$$summary  $$v: skipped (not in pyenv)\n"; continue; \
	  fi; \
	  echo "test-all: Python $$full in .venv-$$v (log: build/test-all-$$v.log)"; \
	  log=build/test-all-$$v.log; start=$$(date +%s); \
	  { $(MAKE) --no-print-directory test PYTHON="$$(pyenv prefix $$full)/bin/python" \
	      VENV=.venv-$$v 2>&1; echo $$? > $$log.rc; } | tee $$log; \
	  rc=$$(cat $$log.rc); rm -f $$log.rc; secs=$$(( $$(date +%s) - start )); \
	  result=$$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' $$log | tail -n 1 | sed -E 's/^=+ / /; s/ =+$$//'); \
	  if [ "$$rc" = 0 ]; then \
	    summary="$$summary  $$v: passed (Python $$full, $${secs}s):$$result\n"; \
	  else \
	    summary="$$summary  $$v: FAILED (Python $$full, $${secs}s):$${result:- see $$log}\n"; \
	    status=1; break; \
	  fi; \
	done; \
	printf "test-all summary:\n$$summary"; exit $$status

# Fails (never skips) when no Python 2.7 is found: `pyenv install 2.7.18`.
conformance: $(STAMP)
	DEFI_WS_REQUIRE_AUTOBAHN=1 $(PY) -m pytest tests/conformance -q -s

# Until Ctrl-C (a summary, exit 0); DEMO_ARGS="--duration 30" for scripts.
DEMO_ARGS ?=
demo: $(STAMP)
	$(PY) -m defi_ws demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) bench/run.py

# Instructions per message through FeedListener.feed() (callgrind), against the committed
# bench/perf_baseline.json: fails on a path more than 3 % above it (~25 s).
perf-guard: $(STAMP)
	$(PY) bench/perf_guard.py

# Measure twice (must agree) and rewrite bench/perf_baseline.json; commit it.
perf-baseline: $(STAMP)
	$(PY) bench/perf_guard.py --write-baseline

# What `make test` runs: the guard, or how to install valgrind when it is missing.
perf-guard-if-valgrind: $(STAMP)
	$(PY) bench/perf_guard.py --if-available

# nats-server + a faulty simulator + a redundancy-2 gateway; a consumer's view (Ctrl-C).
gateway-demo: $(STAMP)
	$(PY) -m defi_ws.gateway.demo

# simulator -> gateway -> JetStream -> consumer: msgs/s, latency, CPU per message.
bench-gateway: $(STAMP)
	$(PY) bench/gateway.py

# Ten minutes of random venue faults against one client (tests/test_soak.py).
soak: $(STAMP)
	DEFI_WS_SOAK_S=600 $(PY) -m pytest tests/test_soak.py -q

annotate: $(STAMP)
	mkdir -p build
	$(VENV)/bin/cython -3 -a defi_ws/_core.pyx -o build/_core_annotate.c
	@echo "annotated HTML: build/_core_annotate.html"

lint: $(STAMP)
	$(VENV)/bin/ruff check defi_ws tests bench examples docs

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict defi_ws

# The guide and the API reference (mkdocstrings, from the docstrings) in build/site;
# any warning fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	@echo "docs: build/site/index.html"

# The .pyi of the compiled module must match what Cython built.
stubtest: $(STAMP)
	$(PY) -m mypy.stubtest defi_ws._core --allowlist stubtest-allowlist.txt

clean:
	rm -rf $(VENV) build dist *.egg-info defi_ws/_core.c defi_ws/_core.html \
	       defi_ws/_core*.so .pytest_cache .mypy_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
