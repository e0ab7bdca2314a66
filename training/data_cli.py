"""``needle data stats FILE...``: what a canonical training file contains.

The numbers answer the questions that decide how to train (FIELD-NOTES sections 9-10): how much
of each source, how many calls per example, which value types the arguments need, and how many
argument values the model can copy from the conversation (a literal span of the user or tool
text) rather than having to produce.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from needle_core.schema import json_type
from training.data import iter_jsonl

VALUE_TYPES = ("string", "integer", "number", "boolean", "array", "object", "null")


def value_type(value: Any) -> str:
    return json_type(value) or "object"


def _scalars(value: Any) -> Iterable[Any]:
    """The scalar values inside an argument (list items and object values included)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _scalars(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _scalars(v)
    else:
        yield value


def number_spellings(value: float) -> list[str]:
    """How a number may be written in text: 25 for 25.0 too."""
    out = [str(value)]
    if isinstance(value, float) and value.is_integer():
        out.append(str(int(value)))
    return out


def is_literal(value: Any, text: str) -> bool | None:
    """Is a string / number value a literal (case-insensitive) substring of ``text``?
    None for values this question does not apply to (booleans, null, empty strings)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() in text if value.strip() else None
    if isinstance(value, (int, float)):
        return any(s.lower() in text for s in number_spellings(value))
    return None


def conversation_text(example: dict) -> str:
    """User, system and tool text, lower-cased: what a value may be copied from."""
    return "\n".join(m.get("content") or "" for m in example["messages"]
                     if m.get("role") in ("user", "system", "tool")).lower()


def _enum(schema: Any) -> list:
    """The enum options of a parameter schema (a nullable ``anyOf`` included)."""
    if not isinstance(schema, dict):
        return []
    options = list(schema.get("enum") or [])
    for branch in schema.get("anyOf") or []:
        options += _enum(branch)
    return options


def compute_stats(examples: Iterable[dict]) -> dict[str, Any]:
    """Counters over examples: per source, per number of calls, per argument value type, and
    literal / not-literal string and number values (overall and per source); a value that is
    not literal but is one of its parameter's enum options is also counted as ``enum option``
    (the model can point at those too)."""
    by_source: Counter = Counter()
    by_calls: Counter = Counter()
    by_type: Counter = Counter()
    literal: dict[str, Counter] = defaultdict(Counter)
    for ex in examples:
        source = ex.get("source", "?")
        by_source[source] += 1
        n = len(ex.get("calls") or [])
        by_calls["3+" if n >= 3 else str(n)] += 1
        text = conversation_text(ex)
        props = {t.get("name"): t.get("parameters", {}).get("properties", {}) for t in ex.get("tools") or []}
        for call in ex.get("calls") or []:
            for name, value in (call.get("arguments") or {}).items():
                by_type[value_type(value)] += 1
                options = _enum(props.get(call.get("name"), {}).get(name))
                for scalar in _scalars(value):
                    verdict = is_literal(scalar, text)
                    if verdict is None:
                        continue
                    kind = "string" if isinstance(scalar, str) else "number"
                    outcome = "literal" if verdict else "not literal"
                    for key in ("all", source):
                        literal[key][f"{kind} {outcome}"] += 1
                        if not verdict and scalar in options:
                            literal[key]["enum option"] += 1
    return {"examples": sum(by_source.values()), "sources": by_source, "calls": by_calls, "types": by_type,
            "literal": literal}


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:5.1f}%" if total else "    -"


def _table(title: str, rows: list[tuple[str, int]], total: int) -> list[str]:
    width = max([len(title)] + [len(k) for k, _ in rows])
    lines = [f"{title:<{width}}  {'count':>8}  {'share':>6}"]
    lines += [f"{k:<{width}}  {v:>8}  {_pct(v, total)}" for k, v in rows]
    return lines + [""]


def format_stats(stats: dict[str, Any]) -> str:
    total = stats["examples"]
    lines = [f"{total} examples", ""]
    lines += _table("source", sorted(stats["sources"].items(), key=lambda kv: -kv[1]), total)
    lines += _table("calls", [(k, stats["calls"].get(k, 0)) for k in ("0", "1", "2", "3+")], total)
    n_values = sum(stats["types"].values())
    lines += _table("argument type", [(t, stats["types"].get(t, 0)) for t in VALUE_TYPES], n_values)
    head = (f"{'literal in user/tool text':<26}{'str yes':>9}{'str no':>8}{'num yes':>9}{'num no':>8}"
            f"{'literal':>9}{'no, enum':>10}")
    lines.append(head)
    keys = ["all"] + sorted(k for k in stats["literal"] if k != "all")
    for key in keys:
        c = stats["literal"].get(key, Counter())
        yes = c["string literal"] + c["number literal"]
        total_v = yes + c["string not literal"] + c["number not literal"]
        lines.append(f"{key:<26}{c['string literal']:>9}{c['string not literal']:>8}{c['number literal']:>9}"
                     f"{c['number not literal']:>8}{_pct(yes, total_v):>9}{c['enum option']:>10}")
    lines.append("(literal: share of string/number values found verbatim, case-insensitive; "
                 "no, enum: not literal but an enum option)")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["stats"], help="what to do (stats: count what the files contain)")
    parser.add_argument("files", nargs="+", help="canonical JSONL files")


def run(args) -> int:
    if args.action == "stats":
        stats = compute_stats(ex for path in args.files for ex in iter_jsonl(path))
        print(format_stats(stats))
    return 0
