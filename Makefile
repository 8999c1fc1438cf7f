# varlen: `make test` (the correctness gates) and `make demo` (the main job) each create ./.venv when it is
# missing and install everything with the exact pins of constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install chromium test demo check bench asv report lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

## Debian's chromium, for the test that renders the report in a real browser (installed when we are root)
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "varlen: chromium is missing: sudo apt-get install chromium (the report's browser test needs it)"; fi; }

## the correctness gates; every framework (and chromium) must be present: none may be skipped
test: $(STAMP) chromium
	VARLEN_REQUIRE_ALL=1 $(BIN)/python -m pytest

## the main job: equivalence check, quick CPU sweep, then the report
demo: $(STAMP)
	$(BIN)/varlen check
	$(BIN)/varlen bench --quick --out results/bench.jsonl
	$(BIN)/varlen report --out results/report

check: $(STAMP)
	$(BIN)/varlen check

## pytest-benchmark over the quick grid, one framework per process
bench: $(STAMP)
	for fw in torch tensorflow jax; do \
	  $(BIN)/python -m pytest tests/test_bench.py -k "test_quick_grid and $$fw-" --benchmark-enable \
	    --benchmark-only --benchmark-json results/pytest-benchmark-$$fw.json || exit 1; done

asv: $(STAMP)
	$(BIN)/asv machine --yes
	$(BIN)/asv run --python=same --quick
	$(BIN)/asv publish

report: $(STAMP)
	$(BIN)/varlen report --out results/report

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) results/report results/asv/html
