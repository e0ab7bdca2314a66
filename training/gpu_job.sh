#!/usr/bin/env bash
# Train on a lent GPU machine and bring the weights back (fp16 safetensors shards under $OUT).
# Needs, carried beside the tree: .carry/features.npz (needle train --prepare), .carry/minilm
# (the MiniLM encoder as fp16 safetensors) and .whl (pydantic wheels for the machine's Python).
set -euo pipefail
MINUTES=${1:-8}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=20
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m needle_core.cli train --config training/configs/gpu.toml --features .carry/features.npz \
    --init-encoder .carry/minilm --out-dir /tmp/run --max-minutes "$MINUTES"
python3 - <<'PY'
import os, shutil
from needle_core.modeling_needle import NeedleForToolCalling
out = os.environ["OUT"]
m = NeedleForToolCalling.from_pretrained("/tmp/run/checkpoint")
m.half().save_pretrained("/tmp/fp16", safe_serialization=True)
shutil.copy("/tmp/fp16/config.json", f"{out}/config.json")
shutil.copy("/tmp/run/checkpoint/trainer_state.json", f"{out}/trainer_state.json")
shutil.copy("/tmp/run/loss_curve.png", f"{out}/loss_curve.png")
PY
# files come back at most 16 MiB each: split the weights, rejoin with cat model.part_* > model.safetensors
split -b 15000000 /tmp/fp16/model.safetensors "$OUT/model.part_"
ls -la "$OUT"
