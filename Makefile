# Two commands: `make book` and `make test` (see README.md).
# Everything is installed into .venv; torch is installed first and exactly
# (a CPU build on this kind of machine), so pip never pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
DATA   ?= data/synthetic
WORK   ?= work
JOBS   ?= 2
# Own cohort: a cohort description (see book/own_cohort.md); empty runs the synthetic cohort
COHORT ?=
CT_INIT ?=
# CT pretraining population outside the study (own cohorts; the synthetic one generates its own)
PRETRAIN_DATA ?=

.PHONY: book test test-fast check install install-test chromium lint bench clean

book: install
	$(BIN)/prrt book --data $(DATA) --work $(WORK) --jobs $(JOBS) $(if $(COHORT),--cohort $(COHORT)) $(if $(CT_INIT),--ct-init $(CT_INIT)) $(if $(PRETRAIN_DATA),--pretrain-data $(PRETRAIN_DATA))

test: install-test chromium
	$(BIN)/python -m pytest

# Without the end-to-end tests (book build, positive control, interruption): a few minutes, for a working session.
test-fast: install-test
	$(BIN)/python -m pytest -m "not slow"

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Keep a torch that is already there (a GPU user's CUDA build); otherwise the exact CPU pin.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --disable-pip-version-check $(TORCH)
	touch $@

# The rest with uv (pip's resolver took about 3.5 of make book's minutes here; uv about 10 s), falling
# back to pip where uv cannot be installed. uv keeps the torch installed above (it satisfies the range).
# --native-tls: the system's certificates, as pip uses them (a proxy's CA included).
INSTALL = $(BIN)/python -m pip install --disable-pip-version-check -q uv 2>/dev/null \
	  && $(BIN)/uv pip install --python $(BIN)/python --native-tls
PIP_FALLBACK = $(BIN)/pip install --disable-pip-version-check

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(INSTALL) -e . || $(PIP_FALLBACK) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(INSTALL) -e '.[test]' || $(PIP_FALLBACK) -e '.[test]'
	touch $@

# The browser test drives Debian's Chromium (a browser download by playwright cannot work offline).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else echo "chromium not found: sudo apt-get install chromium (the browser test will be skipped)"; fi; }

# Validate an own cohort before any training: make check COHORT=cohort.yaml
check: install
	$(BIN)/prrt check $(COHORT)

lint: install-test
	$(BIN)/ruff check prrt_utils tests bench

bench: install
	$(BIN)/python bench/bench_io.py
	$(BIN)/python bench/bench_models.py

clean:
	rm -rf $(WORK) _build book/executed
