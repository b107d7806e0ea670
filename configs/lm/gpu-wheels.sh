#!/usr/bin/env bash
# The wheels a lent GPU machine (whose image has torch, transformers, lightning, sentencepiece, ...
# but not these) needs to run videolm, downloaded here into .whl/ (ignored by git) for a device call
# to carry: run(command=..., carry=[".whl"]). See configs/lm/sizes-grid-gpu.sh.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    vector-quantize-pytorch==1.34.1 einx==0.4.3 frozendict torch-einops-utils==0.2.9 loguru \
    soundfile==0.14.0 cffi pycparser
ls -la .whl
