# The first two targets are the README's two commands. Each one creates .venv
# and installs requirements.txt when missing, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SAMPLES := $(abspath ../shared/data/imagenet-samples)
ifneq ($(wildcard $(SAMPLES)),)
export APEM_DATA ?= $(SAMPLES)
endif
PARAMS ?= default

.PHONY: book test test-fast smoke-book clean

## book: execute every chapter on the offline default parameters and build the HTML (_build/html)
book: $(STAMP)
	$(PY) -m apem book --params $(PARAMS)

# parallel test processes (pytest-xdist): one per core, at most 4; each module's tests stay in one process, the
# longest modules handed out first (tests/conftest.py: LONGEST_FIRST)
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

## test: run the test suite (in TEST_JOBS processes; TEST_JOBS=0 runs it in this one)
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadscope --no-loadscope-reorder

## test-fast: the tests that need no images, no model weights, no chapter execution and take under 3 s each (the edit loop)
test-fast: $(STAMP)
	$(PY) -m pytest -q --fast

## smoke-book: the book on the tiny CI parameters
smoke-book: $(STAMP)
	$(PY) -m apem book --params smoke

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf _build book/chapters
