# varlen: `make test` (the correctness gates) and `make demo` (the main job) each create ./.venv when it is
# missing and install everything with the exact pins of constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install chromium data test demo check bench asv report vendor lint clean gpu-aot

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

## the asv dashboard's browser libraries (jQuery, flot, Bootstrap, ...) from the npm registry, pinned by
## package-lock.json; `make asv` copies them into results/asv/html (harness/asv_offline.py) so it renders offline
NODE_STAMP := node_modules/.package-lock.json
$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; \
	  else echo "varlen: npm is missing: sudo apt-get install npm (the asv dashboard's libraries need it)"; exit 1; fi; }
	npm ci --ignore-scripts --no-audit --no-fund
	touch $(NODE_STAMP)

vendor: $(NODE_STAMP)

## Debian's chromium, for the test that renders the report in a real browser (installed when we are root)
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "varlen: chromium is missing: sudo apt-get install chromium (the report's browser test needs it)"; fi; }

## A real length distribution, computed here, never committed: the King James Bible (public domain), one verse a
## line, from Debian's bible-kjv (installed when we are root); its lengths are whitespace tokens per verse.
KJV := results/data/kjv-verses.txt
$(KJV):
	@command -v bible >/dev/null 2>&1 || { 	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then 	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bible-kjv >/dev/null; 	  else echo "varlen: bible-kjv is missing: sudo apt-get install bible-kjv (the shipped real distribution)"; exit 1; fi; }
	mkdir -p $(dir $(KJV))
	bible -f "Gen1:1-Rev22:21" | sed 's/^[^ ]* //' > $(KJV).tmp
	@test -s $(KJV).tmp || { rm -f $(KJV).tmp; echo "varlen: bible wrote no verse: $(KJV) not made"; exit 1; }
	mv $(KJV).tmp $(KJV)

data: $(KJV)

## JAX's CUDA plugin (with ptxas) in a venv of its own, ~1.4 GB: scripts/gpu_aot.py has XLA compile JAX's GPU
## programs for a compile-only H100 here, with no GPU (a gate of `make test` among them). Not in .venv: there the
## plugin would look for a GPU in every JAX process.
CUDA_VENV  := .venv-cuda
CUDA_STAMP := $(CUDA_VENV)/.installed-stamp
$(CUDA_STAMP): pyproject.toml constraints.txt
	test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[jax,gpu-aot]'
	touch $(CUDA_STAMP)

gpu-aot: $(CUDA_STAMP)
	$(CUDA_VENV)/bin/python scripts/gpu_aot.py

## JAX's persistent compilation cache for the runs that time nothing (the gates, the check): a second `make test` or
## `make check` reads its compiles from it. The two share none: the CPU gates compile with XLA's fast-compile options
## (tests/conftest.py, adapters/jax: VARLEN_XLA_FAST_COMPILE), the check with XLA's defaults, as users do. Timing
## workers turn both off (harness/proc.py: TIMING_ENV), so compile figures stay those of a fresh process with XLA's
## defaults. `make clean` empties it.
JAX_CACHE := JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.cache/jax JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1 JAX_COMPILATION_CACHE_MAX_SIZE=1073741824

## the correctness gates; every framework (and chromium) must be present: none may be skipped. pytest-xdist runs
## them in one worker per core (at most 4: each worker imports all three frameworks, ~2-3 GB); most gates are
## single-threaded Python and tracing, so 2 workers on 2 cores take ~0.65 of the sequential time here.
## `make test PYTEST_WORKERS=0` runs them in one process; the slowest 15 are listed at the end.
PYTEST_WORKERS ?= auto
test: $(STAMP) $(CUDA_STAMP) chromium $(KJV) $(NODE_STAMP)
	VARLEN_REQUIRE_ALL=1 $(JAX_CACHE) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --maxprocesses 4 --durations 15

## the main job: equivalence check, quick CPU sweep (synthetic profiles + the KJV verse lengths), then the report
demo: $(STAMP) $(KJV)
	$(JAX_CACHE) $(BIN)/varlen check
	$(BIN)/varlen bench --quick --lengths-from-text $(KJV) --out results/bench.jsonl
	$(BIN)/varlen report --out results/report

check: $(STAMP)
	$(JAX_CACHE) $(BIN)/varlen check

## pytest-benchmark over the quick grid, one framework per process, with the malloc settings `varlen bench`'s
## workers time that framework with (harness/proc.py; a GLIBC_TUNABLES of your own wins)
bench: $(STAMP)
	for fw in torch tensorflow jax; do \
	  GLIBC_TUNABLES=$$($(BIN)/python -m harness.proc $$fw) \
	    $(BIN)/python -m pytest tests/test_bench.py -k "test_quick_grid and $$fw-" --benchmark-enable \
	    --benchmark-only --benchmark-autosave --benchmark-storage results/pytest-benchmark || exit 1; done

## an `existing` environment saves results only under an explicit commit hash; the dashboard is made self-contained
asv: $(STAMP) $(NODE_STAMP)
	$(BIN)/asv machine --yes
	$(BIN)/asv run --python=same --quick --set-commit-hash $$(git rev-parse HEAD)
	$(BIN)/asv publish
	$(BIN)/python -m harness.asv_offline results/asv/html

report: $(STAMP)
	$(BIN)/varlen report --out results/report

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(CUDA_VENV) results/report results/asv/html node_modules .cache/jax
