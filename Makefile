# Two entry points for a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first: it is the CPU build on local disk; a bare `torch`
# requirement would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench llmc clean

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

# llm-compressor 0.14, for benchmarks/llm.py's side-by-side rows, in its own venv: it pins
# transformers <=5.17 (ours is newer). CPU torch first; its own requirements without
# nvidia-ml-py (NVML bindings, of no use without a GPU).
llmc: .venv-llmc/.installed

.venv-llmc/.installed:
	$(PYTHON) -m venv .venv-llmc
	.venv-llmc/bin/pip install --quiet torch==2.13.0
	.venv-llmc/bin/pip install --quiet --no-deps llmcompressor==0.14.0.1
	.venv-llmc/bin/pip install --quiet torch==2.13.0 "transformers>=5.15,<=5.17" \
		compressed-tensors==0.19.0 "auto-round>=0.14.1,<=0.15.1" "accelerate>=1.15" \
		"datasets>=4.8.4" loguru pyyaml numpy requests tqdm pillow
	touch $@

clean:
	rm -rf $(VENV) runs build src/*.egg-info
