#!/usr/bin/env bash
# The main job on the bundled model: install the inference package, make a few calls, then
# score the model on the Berkeley Function Calling Leaderboard (official AST checker).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip install -q --disable-pip-version-check"
$PIP -e ".[eval]"
bash scripts/install-bfcl.sh
needle call "What's the weather in Paris in celsius?" --tools examples/tools.json
needle eval bfcl --out runs/eval/bundled "$@"
