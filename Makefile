# Two entry points for a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first: it is the CPU build on local disk; a bare `torch`
# requirement would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/sensiprune demo --out runs/demo

test: setup
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m pytest -q -m "not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: setup
	$(PY) benchmarks/unstructured.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
