# cxtest developer entry points. Every target that runs code installs what it
# needs first (scripts/setup.sh is idempotent and fast when nothing changed).
#
#   make setup                      apt packages + .venv with cxtest[test]
#   make demo                       the sandbox demo (cxtest demo)
#   make test                       full suite; with CI set, skips tests marked slow
#   make test PYTEST_ARGS="-k hooks tests/test_sandbox.py"
#   make bench                      every bench/*.py with the venv's python
#   make clean                      caches and build/run outputs (keeps .venv)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

VENV        := .venv
PYTHON      := $(VENV)/bin/python
PYTEST_ARGS ?=

# CI=true (GitHub, GitLab, most runners) selects the CI subset; CI unset, empty,
# "0" or "false" runs everything.
ifneq ($(filter-out 0 false False FALSE,$(CI)),)
PYTEST_MARKS := -m "not slow"
else
PYTEST_MARKS :=
endif

.PHONY: setup demo test bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/cxtest demo

# pytest's exit code is make's exit code: 1 failures, 2 interrupted/usage,
# 5 no tests collected; nothing here masks it.
test: setup
	$(PYTHON) -m pytest $(PYTEST_MARKS) $(PYTEST_ARGS)

bench: setup
	@shopt -s nullglob; files=(bench/*.py); \
	if [[ $${#files[@]} -eq 0 ]]; then echo "bench: no benchmarks in bench/"; exit 0; fi; \
	failed=(); \
	for f in "$${files[@]}"; do \
	    echo "bench: $$f"; \
	    $(PYTHON) "$$f" || failed+=("$$f"); \
	done; \
	if [[ $${#failed[@]} -gt 0 ]]; then echo "bench: failed: $${failed[*]}" >&2; exit 1; fi

clean:
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o \
	    \( -name __pycache__ -o -name .pytest_cache -o -name '*.egg-info' \) -prune -exec rm -rf {} +
	rm -rf build dist out artifacts .coverage htmlcov
