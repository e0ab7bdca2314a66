#!/usr/bin/env bash
# The official BFCL checker, offline: bfcl-eval without its vendor SDKs (FIELD-NOTES section 4).
set -euo pipefail
PIP="python3 -m pip install -q --disable-pip-version-check"
$PIP --no-deps bfcl-eval
$PIP tree_sitter==0.21.3 tree-sitter-java==0.21.0 tree-sitter-javascript==0.21.4 filelock tenacity overrides
