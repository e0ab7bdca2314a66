"""The listed-values rule against the recorded teacher answers (`needle_core.listed_values`).

Each answer is replayed through the decoder (``encode_calls``), once as the teachers gave it and,
for an answer that calls one tool several times, once from its first call alone. Counted:
* one-call answers the rule adds a call to (teachers disagree with it there);
* several-call answers the rule rebuilds from the first call (the same calls, any order).

    python -m training.rule_check runs/data/all.jsonl
"""
from __future__ import annotations

import argparse
import collections
import json

from tqdm.auto import tqdm

import needle_core.decoding as decoding
from needle_core.callformat import Renderer
from needle_core.decoding import CallDecoder, DecodeError, encode_calls
from needle_core.schema import to_tool_spec
from training.data import read_jsonl


def _replay(renderer: Renderer, messages: list[dict], specs: list, calls: list[dict], fan_out: bool) -> list[dict]:
    decoder = CallDecoder(renderer.render(messages, specs), specs)
    encode_calls(decoder, calls)
    old, decoding.FAN_OUT_LISTS = decoding.FAN_OUT_LISTS, fan_out
    try:
        return decoder.calls()
    finally:
        decoding.FAN_OUT_LISTS = old


def _key(calls: list[dict]) -> list[str]:
    return sorted(json.dumps(c, sort_keys=True) for c in calls)


def check_listed_values(examples: list[dict], progress: bool = True) -> dict:
    """Counts as described in the module docstring, with up to 10 examples of each disagreement."""
    renderer = Renderer()
    counts, samples = collections.Counter(), collections.defaultdict(list)
    for ex in tqdm(examples, desc="replaying teacher answers", disable=not progress):
        calls = ex["calls"]
        if not calls:
            continue
        try:
            specs = [to_tool_spec(t) for t in ex["tools"]]
            teacher = _replay(renderer, ex["messages"], specs, calls, fan_out=False)
            ruled = _replay(renderer, ex["messages"], specs, calls, fan_out=True)
        except (DecodeError, ValueError):
            counts["not replayable"] += 1
            continue
        names = [c["name"] for c in teacher]
        if len(set(names)) == len(names):
            counts["one call per tool"] += 1
            if len(ruled) > len(teacher):
                counts["  a call added"] += 1
                samples["added"].append({"request": ex["messages"][-1]["content"][:300], "teacher": teacher,
                                         "added": ruled[len(teacher):]})
        elif len(set(names)) == 1:
            counts["one tool called several times"] += 1
            rebuilt = _replay(renderer, ex["messages"], specs, calls[:1], fan_out=True)
            if _key(rebuilt) == _key(teacher):
                counts["  rebuilt from the first call"] += 1
    return {"counts": dict(counts), "samples": {k: v[:10] for k, v in samples.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="canonical examples (JSONL), e.g. the output of needle import")
    args = parser.parse_args(argv)
    result = check_listed_values(read_jsonl(args.data))
    for name, n in result["counts"].items():
        print(f"{name:34s} {n:6d}")
    for kind, rows in result["samples"].items():
        print(f"\n{kind}:")
        for row in rows:
            print(" ", json.dumps(row, ensure_ascii=False)[:400])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
