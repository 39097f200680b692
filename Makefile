# Two commands do all the set-up on a fresh machine:
#   make demo   -- set up, then train the default network on the bundled digits and write demo/index.html
#   make test   -- set up, then lint (ruff) and run the test suite
#   make docs   -- the documentation site in site/ (extra [docs]; strict: a broken link fails it)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch is pinned in the same pip command so pip never pulls a multi-GB CUDA build here.
TORCH  ?= torch==2.13.0

.PHONY: setup test demo bench gpu-check docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[test,vae,multi,config,plot,hf,app,tensorboard,wandb]"
	touch $@

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[docs]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/patchforcing demo --out demo

bench: setup
	$(VENV)/bin/patchforcing bench --out bench

# Every GPU path on the GPU it finds, one markdown table (<= 10 min on one H100/H200);
# GPU_CHECK_ARGS="--out table.md" also keeps the table in a file, rewritten after every check.
gpu-check: setup
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) demo bench site
