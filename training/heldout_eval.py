"""``needle eval heldout FILE``: exact-match accuracy on held-out training requests.

``FILE`` is the ``<features>.heldout.jsonl`` that ``needle train --prepare`` writes: canonical
requests whose words never reach training. Beside them it scores variants of them
(`training.augment.variants_of`): ones that need several calls of one tool (fan_out, repeat,
zip), which the held-out requests themselves hardly contain, and the same answers asked for in
other words or with other tool names and distractors (restate, variant), where a rule's cost on
one-call requests in unfamiliar wording shows. This is the set on which decoding rules and their
settings are chosen, so that BFCL stays held out.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from training.calibrate import collect
from training.data import read_jsonl

SEVERAL_CALLS = ("fan_out", "repeat", "zip")
REWORDED = ("variant", "restate")
GROUPS = {"plain and reworded": ("plain",) + REWORDED, "several calls": SEVERAL_CALLS}


def heldout_set(examples: list[dict], copies: int = 6) -> list[tuple[str, dict]]:
    """(kind, example): every held-out request ("plain") and its variants of each kind."""
    from training.augment import variants_of

    return [("plain", ex) for ex in examples] + variants_of(examples, SEVERAL_CALLS + REWORDED, copies)


def evaluate_heldout(needle, labelled: list[tuple[str, dict]], progress: bool = True) -> dict:
    """Share of requests whose calls equal the label exactly (order-insensitive), per kind, per
    group of kinds (`GROUPS`) and in all."""
    _, correct = collect(needle, [ex for _, ex in labelled], desc="held-out requests", progress=progress)
    right, total = Counter(), Counter()
    for (kind, _), ok in zip(labelled, correct):
        right[kind] += int(ok)
        total[kind] += 1
    kinds = {k: _score(right[k], n) for k, n in total.items()}
    groups = {g: _score(sum(right[k] for k in members), sum(total[k] for k in members)) for g, members in GROUPS.items()}
    return {"kinds": kinds, "groups": groups, **_score(sum(right.values()), sum(total.values()))}


def _score(correct: int, total: int) -> dict:
    return {"correct": correct, "total": total, "accuracy": correct / max(total, 1)}


def run_heldout(args) -> int:
    from needle_core import Needle

    if not args.data:
        print("needle eval heldout: give the held-out requests with --data FILE "
              "(the <features>.heldout.jsonl written by needle train --prepare)", file=sys.stderr)
        return 2
    examples = read_jsonl(args.data)
    labelled = heldout_set(examples, args.copies)
    results = evaluate_heldout(Needle(args.model), labelled, progress=not args.no_progress)
    results.update(model=args.model or "bundled", data=args.data, copies=args.copies)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heldout_results.json").write_text(json.dumps(results, indent=1))
    rows = [*results["kinds"].items(), *results["groups"].items(), ("all", results)]
    for name, r in rows:
        print(f"{name:25s} {r['correct']:5d} / {r['total']:5d}  {100 * r['accuracy']:.1f}%")
    print(f"results: {out / 'heldout_results.json'}")
    return 0
