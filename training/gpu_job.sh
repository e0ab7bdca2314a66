#!/usr/bin/env bash
# Train on a lent GPU machine and bring the best weights back (fp16 safetensors shards under $OUT).
#
#   bash training/gpu_job.sh CONFIG.toml [CONFIG.toml ...]
#
# Each config trains in its own process, side by side on the one GPU (a 27M-parameter student
# leaves most of an H200 idle, so two runs cost little more than one). Each run is then exported
# and decoded on its config's held-out requests (`needle eval heldout`, the set decoding rules are
# chosen on, never BFCL); the run that decodes the most of them right comes back. Where export or
# decoding cannot run on that machine, the run with the best teacher-forced exact-sequence
# accuracy comes back instead (which once picked the run that decoded worse), and train.log says so.
# Every run's log comes back in train.log, the held-out scores in heldout.json.
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
[ "$status" = 0 ] || echo "a training run failed (exit $status); see train.log" >&2
for cfg in "$@"; do  # each run's log, then its finished model decoded on its held-out requests
    name=$(basename "$cfg" .toml)
    { echo "==== $name ($cfg)"; tr '\r' '\n' <"$RUNS/$name.log" | grep -v '^\s*$' | tail -n 60; } >>"$OUT/train.log"
    [ -f "$RUNS/$name/checkpoint/model.safetensors" ] || continue
    heldout=$(python3 -c "import sys; from training.train import TrainConfig, heldout_path; \
print(heldout_path(TrainConfig.from_file(sys.argv[1]).features))" "$cfg")
    { python3 -m needle_core.cli export "$RUNS/$name/checkpoint" --out "$RUNS/$name/model" &&
      python3 -m needle_core.cli eval heldout --model "$RUNS/$name/model" --data "$heldout" \
          --out "$RUNS/$name/heldout" --no-progress; } >>"$OUT/train.log" 2>&1 ||
        echo "==== $name: export or held-out decoding failed here (see above)" >>"$OUT/train.log"
done
python3 - "$RUNS" "$OUT" <<'PY'
import json, shutil, sys
from pathlib import Path
from needle_core.modeling_needle import NeedleForToolCalling

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
results = []
for state_file in sorted(runs.glob("*/checkpoint/trainer_state.json")):
    state = json.loads(state_file.read_text())
    final = [h for h in state["history"] if "val_exact" in h][-1]
    scores = state_file.parent.parent / "heldout" / "heldout_results.json"
    decoded = json.loads(scores.read_text())["correct"] if scores.exists() else None
    results.append({"run": state_file.parent.parent.name, "decoded": decoded, "val_exact": final["val_exact"],
                    "val_loss": final["val_loss"], "checkpoint": state_file.parent, "state": state})
    print(f"{state_file.parent.parent.name}: step {state['step']}, examples {state['examples']}, "
          f"{state.get('train_minutes', 0):.1f} min, held-out decoded {decoded}, "
          + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
if not results:
    sys.exit("no run finished with a checkpoint")
by_decoding = all(r["decoded"] is not None for r in results)
best = max(results, key=lambda r: (r["decoded"], r["val_exact"]) if by_decoding else (r["val_exact"], -r["val_loss"]))
print(f"best: {best['run']} (chosen by {'held-out requests decoded' if by_decoding else 'teacher-forced val_exact'})")
(out / "heldout.json").write_text(json.dumps(
    {"chosen": best["run"], "chosen_by": "heldout_decoded" if by_decoding else "val_exact",
     "runs": [{k: r[k] for k in ("run", "decoded", "val_exact", "val_loss")} for r in results]}, indent=1))
best, state = best["checkpoint"], best["state"]
NeedleForToolCalling.from_pretrained(str(best)).half().save_pretrained(runs / "fp16", safe_serialization=True)
shutil.copy(runs / "fp16" / "config.json", out / "config.json")
state["chosen_from"] = [r["run"] for r in results]
(out / "trainer_state.json").write_text(json.dumps(state, indent=1))
shutil.copy(best.parent / "loss_curve.png", out / "loss_curve.png")
PY
# files come back at most 16 MiB each: split the weights, rejoin with cat model.part_* > model.safetensors
split -b 15000000 "$RUNS/fp16/model.safetensors" "$OUT/model.part_"
ls -la "$OUT"
