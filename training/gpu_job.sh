#!/usr/bin/env bash
# Train on a lent GPU machine and bring the best weights back (fp16 safetensors shards under $OUT).
#
#   bash training/gpu_job.sh CONFIG.toml [CONFIG.toml ...]
#
# Each config trains in its own process, side by side on the one GPU (a 27M-parameter student
# leaves most of an H200 idle, so two runs cost little more than one). The run with the best
# held-out exact-sequence accuracy comes back; every run's log comes back in train.log.
# Carried beside the tree: the features file the configs name (`needle train --prepare`, kept
# under the git-ignored .carry/), the wheels in $WHEELS (pydantic and jsonschema for the machine's
# Python; empty to skip), and for a fresh start the MiniLM encoder folder the config names
# (`init_from = "bundled"` needs nothing more: it rebuilds the shipped model from its graphs).
set -euo pipefail
MINUTES=${MINUTES:-7}
WHEELS=${WHEELS-.whl}
OUT=${OUT:?set OUT to the folder the weights go to}
if [ -n "$WHEELS" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=20
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
RUNS=/tmp/needle_runs
rm -rf "$RUNS" && mkdir -p "$RUNS"
pids=()
for cfg in "$@"; do
    name=$(basename "$cfg" .toml)
    python3 -m needle_core.cli train --config "$cfg" --out-dir "$RUNS/$name" --max-minutes "$MINUTES" \
        >"$RUNS/$name.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do  # a bare `wait` returns 0 whatever the runs did
    wait "$pid" || status=$?
done
for cfg in "$@"; do
    name=$(basename "$cfg" .toml)
    { echo "==== $name ($cfg)"; tr '\r' '\n' <"$RUNS/$name.log" | grep -v '^\s*$' | tail -n 60; } >>"$OUT/train.log"
done
[ "$status" = 0 ] || echo "a training run failed (exit $status); see train.log" >&2
python3 - "$RUNS" "$OUT" <<'PY'
import json, shutil, sys
from pathlib import Path
from needle_core.modeling_needle import NeedleForToolCalling

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
results = []
for state_file in sorted(runs.glob("*/checkpoint/trainer_state.json")):
    state = json.loads(state_file.read_text())
    final = [h for h in state["history"] if "val_exact" in h][-1]
    results.append((final["val_exact"], -final["val_loss"], state_file.parent, state))
    print(f"{state_file.parent.parent.name}: step {state['step']}, examples {state['examples']}, "
          f"{state.get('train_minutes', 0):.1f} min, " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
if not results:
    sys.exit("no run finished with a checkpoint")
_, _, best, state = max(results, key=lambda r: r[:2])
print(f"best: {best.parent.name}")
NeedleForToolCalling.from_pretrained(str(best)).half().save_pretrained(runs / "fp16", safe_serialization=True)
shutil.copy(runs / "fp16" / "config.json", out / "config.json")
state["chosen_from"] = [r[2].parent.name for r in results]
(out / "trainer_state.json").write_text(json.dumps(state, indent=1))
shutil.copy(best.parent / "loss_curve.png", out / "loss_curve.png")
PY
# files come back at most 16 MiB each: split the weights, rejoin with cat model.part_* > model.safetensors
split -b 15000000 "$RUNS/fp16/model.safetensors" "$OUT/model.part_"
ls -la "$OUT"
