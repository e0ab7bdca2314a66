#!/usr/bin/env bash
# Install everything the test suite needs (all extras, the BFCL checker) and run it.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip install -q --disable-pip-version-check"
$PIP torch==2.13.0                      # the CPU wheel (a bare `torch` would pull a CUDA build)
$PIP -e ".[train,langchain,llama-index,eval,dev]"
bash scripts/install-bfcl.sh
python3 -m pytest -q -p no:cacheprovider "$@"
