# varlen: `make test` (the correctness gates) and `make demo` (the main job) each create ./.venv when it is
# missing and install everything with the exact pins of constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install test demo check bench bench-pytest asv report lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

## the correctness gates; every framework must be present (none may be skipped)
test: $(STAMP)
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
	$(BIN)/asv run --python=same --quick --show-stderr
	$(BIN)/asv publish

report: $(STAMP)
	$(BIN)/varlen report --out results/report

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) results/report results/asv/html
