#!/usr/bin/env bash
# Fills .whl/ (ignored by git) with the wheels the GPU machine lacks, for benchmarks/gpu.sh, which installs
# them when .whl/ exists: name .whl in the device call's carry. The machine's image has torch, transformers,
# accelerate, peft, safetensors and the rest of anysize's needs, but not diffusers (and its need
# importlib_metadata) or the official HiDiffusion package the hidiffusion parts compare against.
# Versions are this checkout's own (diffusers as installed here), for the machine's Python 3.12 on x86-64.
#
#   bash benchmarks/gpu_wheels.sh        # from the repository root; a few MB, needs PyPI
set -eu
cd "$(git rev-parse --show-toplevel)"
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
wanted=("diffusers==$(version diffusers)" "importlib_metadata==$(version importlib_metadata)" "hidiffusion==0.1.10")
rm -rf .whl.tmp && mkdir -p .whl.tmp
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl.tmp "${wanted[@]}"
rm -rf .whl && mv .whl.tmp .whl
ls -l .whl
du -sh .whl
