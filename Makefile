# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv on first use and reinstall only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ptm-installed

.PHONY: demo test test-long fuzz lint clean catalog bench asan docs pictures

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml setup.py ptm_cli/images/_resample.c | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ptm classify data/chelsea.png

# Lint and type-check first (seconds), then the documentation site, then the whole suite (every
# example in README.md and docs/ included), then the C kernel under the sanitizers.
test: $(STAMP)
	$(BIN)/ruff check ptm_cli tests scripts
	$(BIN)/ruff format --check ptm_cli tests scripts
	$(BIN)/mypy ptm_cli
	$(BIN)/python scripts/gen_docs.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -q
	$(BIN)/python scripts/asan.py --examples 500

# Soak and load tests (thousands of images): minutes, still offline.
test-long: $(STAMP)
	$(BIN)/python -m pytest -q -m long

# The image-loader fuzz target with a long budget.
fuzz: $(STAMP)
	PTM_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q tests/test_fuzz.py

lint: $(STAMP)
	$(BIN)/ruff check ptm_cli tests scripts
	$(BIN)/ruff format --check ptm_cli tests scripts
	$(BIN)/mypy ptm_cli

# Rebuild models/torchvision.json and torchvision_detection.json (and the COCO labels) after upgrading torchvision.
catalog: $(STAMP)
	$(BIN)/python scripts/gen_torchvision_catalog.py

# The documentation site, into build/site: each command page's reference rewritten from its --help first.
docs: $(STAMP)
	$(BIN)/python scripts/gen_docs.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The pictures in docs/img, from the sample photos with seeded stand-in weights (report.png needs Chromium).
pictures: $(STAMP)
	$(BIN)/python scripts/docs_pictures.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

BENCH_STAMP := $(VENV)/.ptm-bench-installed

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $(BENCH_STAMP)

# Throughput and start-up against the book's loop, the network alone and a
# timm-style loop, on this machine (about 40 minutes; BENCH_ARGS=--classify-only
# for just the pipeline rows).
bench: $(BENCH_STAMP)
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

# The C kernel under AddressSanitizer and UndefinedBehaviorSanitizer: its tests and a fuzz of its entry
# point (skipped, saying so, where the compiler has no sanitizers).
asan: $(STAMP)
	$(BIN)/python scripts/asan.py $(ASAN_ARGS)
