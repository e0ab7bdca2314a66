"""``needle eval heldout FILE``: exact-match accuracy on held-out training requests.

``FILE`` is the ``<features>.heldout.jsonl`` that ``needle train --prepare`` writes: canonical
requests whose words never reach training. Beside them it scores variants of them that need
several calls of one tool (`training.augment.parallel_variants`: fan_out, repeat, zip), which the
held-out requests themselves hardly contain. This is the set on which decoding rules and their
settings are chosen, so that BFCL stays held out.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from training.calibrate import collect
from training.data import read_jsonl


def heldout_set(examples: list[dict], copies: int = 6) -> list[tuple[str, dict]]:
    """(kind, example): every held-out request ("plain") and its several-calls variants."""
    from training.augment import parallel_variants

    return [("plain", ex) for ex in examples] + parallel_variants(examples, copies)


def evaluate_heldout(needle, labelled: list[tuple[str, dict]], progress: bool = True) -> dict:
    """Share of requests whose calls equal the label exactly (order-insensitive), per kind and in all."""
    _, correct = collect(needle, [ex for _, ex in labelled], desc="held-out requests", progress=progress)
    right, total = Counter(), Counter()
    for (kind, _), ok in zip(labelled, correct):
        right[kind] += int(ok)
        total[kind] += 1
    kinds = {k: {"correct": right[k], "total": n, "accuracy": right[k] / n} for k, n in total.items()}
    n = sum(total.values())
    return {"kinds": kinds, "correct": sum(right.values()), "total": n, "accuracy": sum(right.values()) / max(n, 1)}


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
    for kind, r in results["kinds"].items():
        print(f"{kind:8s} {r['correct']:5d} / {r['total']:5d}  {100 * r['accuracy']:.1f}%")
    print(f"all      {results['correct']:5d} / {results['total']:5d}  {100 * results['accuracy']:.1f}%")
    print(f"results: {out / 'heldout_results.json'}")
    return 0
