#!/usr/bin/env bash
# Build .whl/: the wheels benchmarks/gpu_check.sh installs on a GPU machine of the device tool (no
# network there; its image has Python 3.12 with torch, numpy, pyarrow, tokenizers, transformers,
# safetensors, jinja2, tqdm, psutil, pluggy, matplotlib, prometheus-client, uvloop, pyyaml, fsspec,
# huggingface-hub, xxhash, pandas, aiohttp; see /work/.library/device/KINDS.md). What is missing there
# is downloaded for CPython 3.12 / manylinux x86-64, antlr4 (an sdist only) and our own four
# distributions are built here. About 5 MB; `.whl/` is ignored by git and travels with `carry`.
#
#   bash benchmarks/gpu_wheels.sh        # then: device run "bash benchmarks/gpu_check.sh", carry [".whl"]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    megatron-core==0.16.1 omegaconf==2.3.0 hydra-core==1.3.2 datasets dill multiprocess starlette uvicorn \
    h11 pytest iniconfig
"$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 . plugins/binary_ranking plugins/regression \
    examples/rm-hinge-ranking
ls -la .whl
du -sh .whl
