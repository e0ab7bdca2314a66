"""The list rules against the recorded teacher answers (`needle_core.listed_values`).

Each answer is replayed through the decoder (``encode_calls``) as the teachers gave it, and cut
short: an answer that calls one tool several times from its first call alone, an array of
several values copied from the request from its first item alone. Counted:
* one-call answers the rules add a call to or change a value of (a list joined into one string,
  `decoding.JOIN_LISTS`), and arrays they lengthen (teachers disagree there);
* several-call answers rebuilt from their first call, arrays rebuilt from their first item.

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


def _replay(renderer: Renderer, messages: list[dict], specs: list, calls: list[dict], rules: bool) -> list[dict]:
    decoder = CallDecoder(renderer.render(messages, specs), specs)
    encode_calls(decoder, calls)
    old = decoding.FAN_OUT_LISTS, decoding.COMPLETE_LISTS, decoding.JOIN_LISTS
    decoding.FAN_OUT_LISTS = decoding.COMPLETE_LISTS = decoding.JOIN_LISTS = rules
    try:
        return decoder.calls()
    finally:
        decoding.FAN_OUT_LISTS, decoding.COMPLETE_LISTS, decoding.JOIN_LISTS = old


def _copied_arrays(call: dict) -> list[str]:
    """Arguments holding two or more plain values (the kind an array item is copied as)."""
    return [k for k, v in call["arguments"].items() if isinstance(v, list) and len(v) > 1
            and all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in v)]


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
            teacher = _replay(renderer, ex["messages"], specs, calls, rules=False)
            ruled = _replay(renderer, ex["messages"], specs, calls, rules=True)
        except (DecodeError, ValueError):
            counts["not replayable"] += 1
            continue
        for i, call in enumerate(teacher):
            for key in _copied_arrays(call):
                counts["arrays of several values"] += 1
                if len(ruled) == len(teacher) and ruled[i]["arguments"].get(key) != call["arguments"][key]:
                    counts["  lengthened"] += 1
                    samples["lengthened"].append({"request": ex["messages"][-1]["content"][:300],
                                                  "teacher": call["arguments"][key],
                                                  "ruled": ruled[i]["arguments"].get(key)})
                cut = [dict(c, arguments={**c["arguments"], key: c["arguments"][key][:1]}) if j == i else c
                       for j, c in enumerate(teacher)]
                try:
                    again = _replay(renderer, ex["messages"], specs, cut, rules=True)
                except (DecodeError, ValueError):
                    continue
                if len(again) == len(teacher) and again[i]["arguments"].get(key) == call["arguments"][key]:
                    counts["  rebuilt from the first item"] += 1
        names = [c["name"] for c in teacher]
        if len(set(names)) == len(names):
            counts["one call per tool"] += 1
            if len(ruled) > len(teacher):
                counts["  a call added"] += 1
                samples["added"].append({"request": ex["messages"][-1]["content"][:300], "teacher": teacher,
                                         "added": ruled[len(teacher):]})
            elif _key(ruled) != _key(teacher) and not any(_copied_arrays(c) for c in teacher):
                counts["  a value changed"] += 1  # e.g. a list joined into one string argument
                samples["changed"].append({"request": ex["messages"][-1]["content"][:300], "teacher": teacher,
                                           "ruled": ruled})
        elif len(set(names)) == 1:
            counts["one tool called several times"] += 1
            rebuilt = _replay(renderer, ex["messages"], specs, calls[:1], rules=True)
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
