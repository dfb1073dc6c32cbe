#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels benchmarks/gpu_check.py needs on this workplace's
# lent H200 beyond its image, whose python3 (3.12) has torch, transformers 5.17, peft,
# accelerate, pyarrow and tokenizers but no network: the dev venv's transformers and peft
# (the versions the CPU tests run), DeepSpeed (built here with no compiled ops, so pure
# Python) with the packages it needs that the image lacks, zstandard (ftscale's JSONL reader)
# and regex (transformers checks its version at import). Ray is not needed there: the checks
# drive the trainer's recipe directly (benchmarks/recipe_harness.py). gpu_check.py's
# docstring has the device command that installs them.
#
#     bash benchmarks/gpu_wheels.sh        # PYTHON=... to use another interpreter than python3
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

rm -rf .whl
mkdir .whl
pins=()
for name in transformers peft zstandard regex hjson pydantic pydantic-core annotated-types typing-inspection \
            typing-extensions; do
  pins+=("$name==$(version "$name")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${pins[@]}"
DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=0 "$PY" -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation -w .whl "deepspeed==$(version deepspeed)"
ls .whl
du -sh .whl
