"""Importers: the recorded teacher sets in ``../shared/data`` -> canonical training examples.

Each set has its own format (see ``../shared/data/SOURCES.md``); each importer below turns one
into examples of the form in `training.data`. Every tool goes through
`needle_core.schema.to_tool_spec` and every call through `validate_call` (the stored arguments
are the coerced ones). A source record that cannot be imported is *rejected* and counted under a
short reason (with a few samples kept for reading), never dropped silently.

Decisions worth knowing before training on the output:

- **Calls that need an earlier result** (Seal-Tools ``"API_call_1"``, NESTFUL ``"$var1.id$"``):
  none of the sets records the results, so the value such a call needs is unknown. An example
  is the *next* assistant turn, and at the first turn only the calls that need no result can be
  made, so the example holds every call whose arguments are literal (as parallel calls), and the
  dependent calls are left out and counted (note ``dependent calls left for a later turn``).
  Their tools stay in the tool list. No later-turn examples are built: they would need invented
  tool results.
- **ToolRL** renders tools without ``required`` lists; a parameter without a default and not
  marked ``optional`` is taken as required, unless the teacher's call omits it (then it is
  optional, counted as a note): the rendering lost the flag, and the teacher's choice is the
  best evidence left.
- **DroidCall** records Android intents, not calls. Each intent is mapped to the api.jsonl
  function that performs it (`DroidCallMapper`). Intents with no such function (taxi, media,
  notes, web pages), values the generator invented that the request does not contain (contact
  URIs, event timestamps that disagree with the request) and calls missing a required argument
  are rejected by reason. Option lists that api.jsonl writes in prose ("Possible values are:
  ...") become ``enum``s.
- **API-Bank level 3**: ``lv3-api-train`` and ``lv3-response-train`` are the two halves of
  ``lv3-train``; all three are read and the repeats counted as duplicates. The tools of an
  example are ToolSearcher plus every tool a ToolSearcher result in the history revealed.
- **glaive** and **ToolRL** histories become real multi-turn message lists (assistant tool
  calls, tool results); glaive yields one example per assistant decision, no-call turns included.

CLI: ``needle import [--data-dir ../shared/data] [--out FILE] [--sources a b] [--limit N]``.
"""
from __future__ import annotations

import ast
import copy
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, unquote_plus

from tqdm.auto import tqdm

from needle_core.errors import ToolCallError, ToolSchemaError
from needle_core.schema import to_tool_spec
from training.data import iter_jsonl, validate_example, write_jsonl

DEFAULT_DATA_DIR = "../shared/data"
SAMPLES_PER_REASON = 3


# ---- rejection bookkeeping ------------------------------------------------------------------

class Reject(Exception):
    """One source record cannot be imported; ``reason`` is the short key it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class SourceReport:
    """What one importer did: records read, examples kept, rejections and notes by reason."""

    source: str
    records: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)

    def reject(self, record_id: str, exc: Reject) -> None:
        self.rejected[exc.reason] += 1
        shown = self.samples.setdefault(exc.reason, [])
        if len(shown) < SAMPLES_PER_REASON:
            shown.append(f"{record_id}: {exc.detail}"[:300])

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "kept": self.kept, "rejected": dict(self.rejected.most_common()),
                "notes": dict(self.notes.most_common()), "samples": self.samples}


def _generalise(message: str) -> str:
    """An error message with its specifics (quoted names, numbers) blanked, to count by kind."""
    message = re.sub(r"'[^']*'|\"[^\"]*\"", "…", message)
    return re.sub(r"\d+", "N", message)


# ---- types and tools --------------------------------------------------------------------------

_TYPE_NAMES = {
    "str": "string", "string": "string", "text": "string", "datetime": "string", "date": "string",
    "time": "string", "enum": "string", "char": "string", "none": "string",
    "int": "integer", "integer": "integer", "long": "integer",
    "float": "number", "number": "number", "double": "number", "decimal": "number",
    "bool": "boolean", "boolean": "boolean",
    "dict": "object", "object": "object", "map": "object", "mapping": "object", "json": "object",
    "list": "array", "array": "array", "tuple": "array", "set": "array", "sequence": "array",
    "any": "any", "null": "null",
}
_GENERIC = re.compile(r"^\s*([A-Za-z_.]+)\s*\[(.*)\]\s*$", re.DOTALL)


def _split_top(args: str) -> list[str]:
    """``"int, List[str]"`` -> ``["int", "List[str]"]`` (commas inside brackets kept)."""
    parts, depth, cur = [], 0, ""
    for ch in args:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in parts + [cur] if p.strip()]


def _merge_alternatives(nodes: list[dict]) -> dict:
    """One node for a union: null dropped, int|float -> number, otherwise the first option
    (the decoder reads one type per node, and the first option is the one sources mean)."""
    nodes = [n for n in nodes if n.get("type") != "null"] or [{"type": "string"}]
    types = {n["type"] for n in nodes}
    if types <= {"integer", "number"}:
        return {"type": "number" if "number" in types else "integer"}
    return nodes[0]


def type_to_schema(spec: Any) -> dict:
    """A loose type name (Python ``List[int]``, ``"str, optional"``, ``"Number"``, ``["string",
    "null"]``) -> a JSON Schema node with a single type. Raises ValueError for types that have
    no JSON form (``Callable``)."""
    if spec is None:
        return {"type": "string"}
    if isinstance(spec, list):
        return _merge_alternatives([type_to_schema(s) for s in spec])
    text = str(spec).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            options = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options = None
        if isinstance(options, list):
            return type_to_schema(options)
    text = re.sub(r",\s*optional\s*$", "", text, flags=re.IGNORECASE).strip()
    generic = _GENERIC.match(text)
    if generic:
        outer, inner = generic.group(1).split(".")[-1].lower(), _split_top(generic.group(2))
        if outer == "optional":
            return type_to_schema(inner[0] if inner else None)
        if outer == "union":
            return _merge_alternatives([type_to_schema(i) for i in inner])
        if outer == "literal":
            values = [ast.literal_eval(i) for i in inner]
            return {"type": "string", "enum": [str(v) for v in values]}
        if outer in ("list", "sequence", "set", "iterable"):
            return {"type": "array", "items": type_to_schema(inner[0]) if inner else {}}
        if outer == "tuple":
            items = [type_to_schema(i) for i in inner if i != "..."]
            return {"type": "array", "items": _merge_alternatives(items) if items else {}}
        if outer in ("dict", "mapping"):
            return {"type": "object"}  # free-form: the canonical form allows any keys
        raise ValueError(f"unsupported type {text!r}")
    word = re.split(r"[\s(]", text, maxsplit=1)[0].lower() if text else "str"
    if word not in _TYPE_NAMES:
        raise ValueError(f"unsupported type {text!r}")
    name = _TYPE_NAMES[word]
    if name == "array":
        return {"type": "array", "items": {}}  # item type unknown: anything
    return {"type": name}


_DEFAULT_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool}


def param_node(type_spec: Any, description: str = "", *, enum: list | None = None, default: Any = None) -> dict:
    """A parameter's schema node. Defaults are kept only when they already have the declared
    type (sources write ``"default": ""`` for "none"); enums only when non-empty."""
    node = type_to_schema(type_spec)
    node["description"] = description or ""
    enum = _fit_enum(enum, node["type"]) if enum else None
    if enum:
        node["enum"] = enum
    py = _DEFAULT_TYPES.get(node["type"])
    if default not in (None, "") and py and isinstance(default, py) and not (
            node["type"] != "boolean" and isinstance(default, bool)):
        node["default"] = default
    return node


def _fit_enum(values: list, type_name: str) -> list | None:
    """Enum options in the declared type: sources write ``"allowed_values": ["1", "2"]`` for a
    number, or numbers for a string. Options that cannot be read as the type drop the enum."""
    out = []
    for v in values:
        if type_name == "string" and isinstance(v, (str, int, float)) and not isinstance(v, bool):
            out.append(str(v))
        elif type_name in ("integer", "number") and not isinstance(v, bool):
            try:
                num = float(v)
            except (TypeError, ValueError):
                return None
            if type_name == "integer" and not num.is_integer():
                return None
            out.append(int(num) if type_name == "integer" or num.is_integer() else num)
        elif type_name == "boolean" and isinstance(v, bool):
            out.append(v)
        else:
            return None
    return list(dict.fromkeys(out)) or None


def function_dict(name: str, description: str, properties: dict[str, dict], required: Iterable[str]) -> dict:
    required = [r for r in required if r in properties]
    return {"name": name, "description": description or "",
            "parameters": {"type": "object", "properties": properties, "required": required}}


def canonical_tool(raw: dict) -> dict:
    """Any tool dict `to_tool_spec` accepts -> canonical dict; `Reject` on a schema error."""
    try:
        return to_tool_spec(raw).to_dict()
    except ToolSchemaError as exc:
        raise Reject("tool schema not convertible", str(exc)) from None
    except (TypeError, ValueError, KeyError) as exc:  # a malformed dict the converter did not name
        raise Reject("tool schema not convertible", f"{raw.get('name', '?')}: {exc}") from None


def seal_tool(raw: dict) -> dict:
    """A Seal-Tools tool.jsonl row -> canonical tool dict (raises `Reject`)."""
    props = {}
    for pname, p in (raw.get("parameters") or {}).items():
        try:
            props[pname] = param_node(p.get("type"), p.get("description", ""), enum=p.get("choices"),
                                      default=p.get("default"))
        except ValueError as exc:
            raise Reject("unsupported parameter type", f"{raw.get('api_name')}.{pname}: {exc}") from None
    return canonical_tool(function_dict(raw["api_name"], raw.get("api_description", ""), props,
                                        raw.get("required") or []))


def seal_tool_file(path: str | Path) -> Path:
    """Seal-Tools' tool.jsonl, given the shared data folder, its seal_tools folder or the file."""
    path = Path(path)
    for candidate in (path, path / "tool.jsonl", path / "seal_tools" / "tool.jsonl"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no Seal-Tools tool.jsonl at {path} (give the shared data folder, "
                            "its seal_tools folder or the file itself)")


def load_seal_tools(path: str | Path) -> dict[str, tuple[dict, str]]:
    """Seal-Tools tool.jsonl -> {name: (canonical tool, field)}; unconvertible rows are skipped
    (the pool is for lookups and distractors; importers count the examples that need them).
    Converted once per file and cached: treat the result as read-only."""
    return _load_seal_tools(str(seal_tool_file(path).resolve()))


@lru_cache(maxsize=4)
def _load_seal_tools(path: str) -> dict[str, tuple[dict, str]]:
    out: dict[str, tuple[dict, str]] = {}
    for name, raw in _seal_rows(path).items():
        try:
            out[name] = (seal_tool(raw), raw.get("field", ""))
        except Reject:
            continue
    return out


@lru_cache(maxsize=4)
def _seal_rows(path: str) -> dict[str, dict]:
    """tool.jsonl rows by name, unconverted (the importer converts only the tools it needs)."""
    return {raw["api_name"]: raw for raw in iter_jsonl(path)}


# ---- building one example ---------------------------------------------------------------------

def valid_tool_name(name: str) -> str:
    """A name `to_tool_spec` accepts: other characters become ``_``, a leading digit gets ``_``
    (sources use ``"Search Managers"``, ``"products/list"``, ``"3KS6Szt"``)."""
    from needle_core.schema import TOOL_NAME_RE

    if TOOL_NAME_RE.match(name):
        return name
    fixed = re.sub(r"[^A-Za-z0-9_.:\-]+", "_", name.strip()).strip("_") or "tool"
    if not re.match(r"[A-Za-z_]", fixed):
        fixed = "_" + fixed
    return fixed[:128]


def _rename_tools(tools: list[dict], messages: list[dict], calls: list[dict]) -> int:
    """Make every tool name valid, renaming consistently in tools, history and calls (in place);
    returns how many tools were renamed."""
    renames = {}
    for tool in tools:
        name = tool.get("name")
        if isinstance(name, str) and name and valid_tool_name(name) != name:
            renames[name] = valid_tool_name(name)
    if not renames:
        return 0
    for tool in tools:
        tool["name"] = renames.get(tool["name"], tool["name"])
    for msg in messages:
        for call in msg.get("tool_calls") or []:
            call["name"] = renames.get(call["name"], call["name"])
        if msg["role"] == "tool" and msg.get("name"):
            msg["name"] = renames.get(msg["name"], msg["name"])
    for call in calls:
        call["name"] = renames.get(call["name"], call["name"])
    return len(renames)


def checked_calls(calls: list[tuple[str, Any]], specs: list, what: str = "call") -> list[dict]:
    """Validate (name, arguments) pairs against specs -> canonical calls with coerced arguments."""
    from needle_core.schema import validate_call

    names = {s.name for s in specs}
    out = []
    for name, args in calls:
        if name not in names:
            raise Reject(f"{what} to a tool that is not declared", str(name))
        if not isinstance(args, dict):
            raise Reject(f"{what} arguments are not an object", f"{name}: {args!r}"[:200])
        try:
            out.append({"name": name, "arguments": validate_call(name, args, specs)})
        except ToolCallError as exc:
            raise Reject(f"{what} fails validate_call: {_generalise(exc.problem)}", str(exc)) from None
    return out


def make_example(*, messages: list[dict], tools: list[dict], calls: list[dict], source: str, teacher: str,
                 example_id: str, notes: Counter | None = None) -> dict:
    """Assemble and check one canonical example; raises `Reject` saying what is wrong.

    ``tools`` are tool dicts in any form `to_tool_spec` accepts (they are canonicalised here,
    invalid names repaired consistently everywhere); ``calls`` are ``{"name", "arguments"}``.
    Assistant calls in the history are validated too: a bad history is as wrong as a bad label.
    """
    messages, calls = copy.deepcopy(messages), copy.deepcopy(calls)
    tools = [dict(t) for t in tools]
    renamed = _rename_tools(tools, messages, calls)
    if renamed and notes is not None:
        notes["tool names made valid (renamed everywhere)"] += renamed
    tools = [canonical_tool(t) for t in tools]
    names = [t["name"] for t in tools]
    if len(set(names)) != len(names):
        raise Reject("duplicate tool names", ", ".join(sorted({n for n in names if names.count(n) > 1})))
    specs = [to_tool_spec(t) for t in tools]
    for msg in messages:
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            coerced = checked_calls([(c["name"], c["arguments"]) for c in msg["tool_calls"]], specs, "history call")
            for c, cc in zip(msg["tool_calls"], coerced):
                c["arguments"] = cc["arguments"]
    ex = {"messages": messages, "tools": tools,
          "calls": checked_calls([(c["name"], c["arguments"]) for c in calls], specs),
          "source": source, "teacher": teacher, "id": example_id}
    problems = validate_example(ex)
    if problems:
        raise Reject("example fails validate_example", "; ".join(problems))
    return ex


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(calls: list[dict] | None = None, content: str = "") -> dict:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tool_result(call: dict, content: Any) -> dict:
    if not isinstance(content, str):
        content = json.dumps(content, ensure_ascii=False, default=str)
    return {"role": "tool", "tool_call_id": call["id"], "name": call["name"], "content": content}


class _CallIds:
    """Hands out ``c1``, ``c2``... so tool results can name the call they answer."""

    def __init__(self) -> None:
        self.n = 0

    def call(self, name: str, arguments: Any) -> dict:
        self.n += 1
        return {"id": f"c{self.n}", "name": name, "arguments": arguments}


def _load_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def _mentions_reference(value: Any, pattern: re.Pattern) -> bool:
    if isinstance(value, str):
        return bool(pattern.search(value))
    if isinstance(value, dict):
        return any(_mentions_reference(v, pattern) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_mentions_reference(v, pattern) for v in value)
    return False


def _first_turn(calls: list[tuple[str, dict]], pattern: re.Pattern) -> list[dict]:
    """The calls whose arguments need no earlier result (see the module docstring); `Reject`
    when there is none."""
    literal = [{"name": n, "arguments": a} for n, a in calls if not _mentions_reference(a, pattern)]
    if not literal:
        raise Reject("every call needs an earlier result")
    return literal


_DEPENDENT = "dependent calls left for a later turn"


def _first_turn_example(query, seq: list[tuple[str, dict]], schemas: dict, to_tool, missing: str,
                        pattern: re.Pattern, source: str, teacher: str, rid: str, report) -> list[dict]:
    """A call sequence (Seal-Tools, NESTFUL) as one example of its first turn: the calls that need
    no earlier result, with every tool the sequence uses declared."""
    if not isinstance(query, str) or not seq:
        raise Reject("record has no query or no calls")
    tools = []
    for name, _ in seq:
        if name not in schemas:
            raise Reject(missing, name)
        if all(t["name"] != name for t in tools):
            tools.append(to_tool(schemas[name]))
    calls = _first_turn(seq, pattern)
    ex = make_example(messages=[_user(query)], tools=tools, calls=calls, source=source, teacher=teacher,
                      example_id=rid, notes=report.notes)
    report.notes[_DEPENDENT] += len(seq) - len(calls)
    return [ex]


# ---- Seal-Tools -------------------------------------------------------------------------------

SEAL_SPLITS = ("dev", "test_in_domain", "test_out_domain")
_SEAL_REF = re.compile(r"API_call_\d+")


def import_seal_tools(data_dir: Path, report: SourceReport, limit: int | None = None) -> Iterator[tuple[str, Callable]]:
    rows = _seal_rows(str(seal_tool_file(data_dir).resolve()))

    for split in SEAL_SPLITS:
        for row in islice(iter_jsonl(data_dir / "seal_tools" / f"{split}.jsonl"), limit):
            rid = f"seal_tools/{split}/{row.get('id')}"

            def convert(row=row, rid=rid):
                seq = [(c["api"], c.get("parameters") or {}) for c in row.get("calling") or []]
                return _first_turn_example(row.get("query"), seq, rows, seal_tool, "tool not found in tool.jsonl",
                                           _SEAL_REF, "seal_tools", "gpt-3.5-turbo", rid, report)

            yield rid, convert


# ---- ToolRL -----------------------------------------------------------------------------------

_TOOLRL_TOOLS = re.compile(r"\*\*Available Tools\*\*(.*?)\*\*Steps for Each Turn\*\*", re.DOTALL)
_TOOLRL_TURN = re.compile(r"<(user|think|tool_call|obs|response)>(.*?)</\1>", re.DOTALL)


def _json_objects(block: str) -> list[Any]:
    """Every JSON value in a block written one per line (or run together)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(block) and block[i].isspace():
            i += 1
        if i >= len(block):
            return out
        value, i = decoder.raw_decode(block, i)
        out.append(value)


def _toolrl_tools(instruction: str) -> tuple[list[dict], dict[str, set[str]]]:
    """Tools rendered in the instruction -> (tool dicts, {tool: parameters taken as required})."""
    block = _TOOLRL_TOOLS.search(instruction)
    if not block:
        raise Reject("no tool list in the instruction")
    entries = re.split(r"(?m)^(?=\d+\. Name: )", block.group(1).strip())
    tools, required = [], {}
    for entry in (e.strip() for e in entries if re.match(r"\d+\. Name: ", e)):
        m = re.match(r"\d+\. Name: (.*?)\nDescription: (.*?)\nParameters: (.*)$", entry, re.DOTALL)
        if not m:
            raise Reject("tool entry not parseable", entry[:120])
        name, desc = m.group(1).strip(), m.group(2).strip()
        try:
            params = json.loads(m.group(3).strip())
        except json.JSONDecodeError as exc:
            raise Reject("tool parameters are not JSON", f"{name}: {exc}") from None
        if not isinstance(params, dict):
            raise Reject("tool parameters are not JSON", name)
        props, req = {}, set()
        for pname, p in params.items():
            p = p if isinstance(p, dict) else {}
            try:
                props[pname] = param_node(p.get("type"), p.get("description", ""), enum=p.get("enum"),
                                          default=p.get("default"))
            except ValueError as exc:
                raise Reject("unsupported parameter type", f"{name}.{pname}: {exc}") from None
            if "optional" not in str(p.get("type", "")).lower() and p.get("default") in ("", None):
                req.add(pname)
        tools.append(function_dict(name, desc, props, []))
        required[name] = req
    return tools, required


def _toolrl_calls(block: str) -> list[tuple[str, dict]]:
    try:
        objs = _json_objects(block)
    except json.JSONDecodeError as exc:
        raise Reject("tool_call line is not JSON", f"{exc}: {block[:120]!r}") from None
    calls = []
    for obj in objs:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise Reject("tool_call line has no name", str(obj)[:120])
        calls.append((obj["name"].strip(), obj.get("parameters", obj.get("arguments", {})) or {}))
    return calls


def _toolrl_history(text: str, ids: _CallIds) -> list[dict]:
    """``<user>/<tool_call>/<obs>/<response>`` history -> messages."""
    messages: list[dict] = []
    pending: list[dict] = []  # calls of the last assistant turn not yet answered
    for tag, body in _TOOLRL_TURN.findall(text):
        body = body.strip()
        if tag == "user":
            messages.append(_user(body))
        elif tag == "tool_call":
            calls = [ids.call(n, a) for n, a in _toolrl_calls(body)]
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and not last.get("tool_calls"):
                last["tool_calls"] = calls
            else:
                messages.append(_assistant(calls))
            pending = list(calls)
        elif tag == "obs":
            try:
                results = json.loads(body)
            except json.JSONDecodeError:
                results = None
            if isinstance(results, dict):
                results = [results]
            if not pending:
                raise Reject("tool result without a call", body[:120])
            if not isinstance(results, list):
                messages.append(_tool_result(pending.pop(0), body))
                continue
            for res in results:
                name = res.get("name") if isinstance(res, dict) else None
                match = next((c for c in pending if c["name"] == name), pending[0] if pending else None)
                if match is None:
                    raise Reject("more tool results than calls", body[:120])
                pending.remove(match)
                messages.append(_tool_result(match, res.get("results", res) if isinstance(res, dict) else res))
        elif tag == "response":
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and not last["content"]:
                last["content"] = body
            else:
                messages.append(_assistant(content=body))
    return messages


def import_toolrl(data_dir: Path, report: SourceReport, limit: int | None = None) -> Iterator[tuple[str, Callable]]:
    rows = _load_json(data_dir / "toolrl" / "rlla_sft.json")
    for i, row in enumerate(islice(rows, limit)):
        rid = f"toolrl/rlla_sft/{i}"

        def convert(row=row, rid=rid):
            raw_tools, required = _toolrl_tools(row["instruction"])
            ids = _CallIds()
            messages = _toolrl_history(row["input"], ids)
            if not messages or messages[-1]["role"] == "assistant":
                raise Reject("history does not end with a user turn or tool result")
            output = re.sub(r"<think>.*?(</think>|$)", "", row["output"], flags=re.DOTALL)
            calls = [c for block in re.findall(r"<tool_call>(.*?)(?:</tool_call>|$)", output, re.DOTALL)
                     for c in _toolrl_calls(block)]
            # Parameters the teacher left out cannot have been required (the rendering lost the flag).
            used = [(m_call["name"], m_call["arguments"]) for m in messages for m_call in m.get("tool_calls", [])]
            for name, args in used + calls:
                omitted = required.get(name, set()) - set(args if isinstance(args, dict) else {})
                if omitted:
                    report.notes["parameters taken as optional (teacher omitted them)"] += len(omitted)
                    required[name] -= omitted
            for tool in raw_tools:
                params = tool["parameters"]
                params["required"] = [p for p in params["properties"] if p in required[tool["name"]]]
            return [make_example(messages=messages, tools=raw_tools,
                                 calls=[{"name": n, "arguments": a} for n, a in calls],
                                 source="toolrl", teacher="DeepSeek-R1", example_id=rid, notes=report.notes)]

        yield rid, convert


# ---- glaive (ShareGPT with function_call / observation turns) -----------------------------------

def _glaive_call(value: str) -> dict:
    try:
        call = json.loads(value)
    except json.JSONDecodeError as exc:
        raise Reject("function_call is not JSON", str(exc)) from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise Reject("function_call has no name", value[:120])
    args = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise Reject("function_call arguments are not JSON", str(exc)) from None
    return {"name": call["name"], "arguments": args}


def import_glaive(data_dir: Path, report: SourceReport, limit: int | None = None) -> Iterator[tuple[str, Callable]]:
    rows = _load_json(data_dir / "glaive_demo" / "glaive_toolcall_en_demo.json")
    for i, row in enumerate(islice(rows, limit)):
        rid = f"glaive_demo/{i}"

        def convert(row=row, rid=rid):
            try:
                raw_tools = json.loads(row.get("tools") or "[]")
            except json.JSONDecodeError as exc:
                raise Reject("tools field is not JSON", str(exc)) from None
            if not isinstance(raw_tools, list):
                raise Reject("tools field is not a list", str(raw_tools)[:80])
            ids, messages, examples = _CallIds(), [], []
            for t, turn in enumerate(row.get("conversations") or []):
                who, value = turn.get("from"), turn.get("value", "")
                call = _glaive_call(value) if who == "function_call" else None
                if who in ("function_call", "gpt") and messages and messages[-1]["role"] in ("user", "tool"):
                    ex = make_example(messages=messages, tools=raw_tools, calls=[call] if call else [],
                                      source="glaive_demo", teacher="glaive", example_id=f"{rid}/{t}",
                                      notes=report.notes)
                    examples.append(ex)
                    call = ex["calls"][0] if call else None  # coerced
                if who == "human":
                    messages.append(_user(value))
                elif who == "gpt":
                    messages.append(_assistant(content=value))
                elif who == "function_call":
                    messages.append(_assistant([ids.call(call["name"], call["arguments"])]))
                elif who == "observation":
                    last = messages[-1] if messages else {}
                    if not last.get("tool_calls"):
                        raise Reject("observation without a function_call", value[:120])
                    messages.append(_tool_result(last["tool_calls"][0], value))
                else:
                    raise Reject("unknown turn role", str(who))
            if not examples:
                raise Reject("conversation has no assistant decision")
            return examples

        yield rid, convert


# ---- NESTFUL ----------------------------------------------------------------------------------

NESTFUL_SETS = ("executable", "non-executable-glaive", "non-executable-sgd")
_NESTFUL_REF = re.compile(r"\$var_?\d+")


def _loose_node(p: Any) -> dict:
    """A parameter in loose JSON Schema (NESTFUL): type names in any case (``String``,
    ``Number``, ``Date (yyyy-mm-dd)``), ``allowed_values`` for ``enum``, ``default_value``, and
    ``required: true`` flags on nested properties instead of a list."""
    p = p if isinstance(p, dict) else {}
    node = param_node(p.get("type"), p.get("description", ""), enum=p.get("enum") or p.get("allowed_values"),
                      default=p.get("default", p.get("default_value")))
    if node["type"] == "array" and isinstance(p.get("items"), dict):
        node["items"] = _loose_node(p["items"])
    if node["type"] == "object" and isinstance(p.get("properties"), dict) and p["properties"]:
        props = p["properties"]
        node["properties"] = {k: _loose_node(v) for k, v in props.items()}
        required = p.get("required")
        node["required"] = required if isinstance(required, list) else [
            k for k, v in props.items() if isinstance(v, dict) and v.get("required") is True]
    return node


def nestful_tool(spec: dict) -> dict:
    """A NESTFUL spec (three dialects: query_parameters / parameters / arguments) -> tool dict."""
    params = spec.get("query_parameters") or spec.get("parameters") or spec.get("arguments") or {}
    params = {**params, **(spec.get("path_parameters") or {})}
    props, required = {}, []
    for pname, p in params.items():
        try:
            props[pname] = _loose_node(p)
        except ValueError as exc:
            raise Reject("unsupported parameter type", f"{spec.get('name')}.{pname}: {exc}") from None
        if isinstance(p, dict) and p.get("required") is True:
            required.append(pname)
    return function_dict(spec["name"], spec.get("description", ""), props, required)


def import_nestful(data_dir: Path, report: SourceReport, limit: int | None = None) -> Iterator[tuple[str, Callable]]:
    for name in NESTFUL_SETS:
        specs = {s["name"]: s for s in _load_json(data_dir / "nestful" / f"{name}-spec.json")}
        for i, row in enumerate(islice(_load_json(data_dir / "nestful" / f"{name}-data.json"), limit)):
            rid = f"nestful/{name}/{i}"

            def convert(row=row, rid=rid, specs=specs):
                # "var_result" is the sequence's final answer assembly, not a call.
                seq = [(c["name"], c.get("arguments") or {}) for c in row.get("output") or []
                       if c.get("name") != "var_result"]
                return _first_turn_example(row.get("input"), seq, specs, nestful_tool, "tool not in the spec file",
                                           _NESTFUL_REF, "nestful", "llm-generated, human-selected", rid, report)

            yield rid, convert


# ---- DroidCall --------------------------------------------------------------------------------

def _described_options(description: str) -> list[str] | None:
    """The options a description lists (``Possible values are: - "wifi": ... - "apn": ...``).

    DroidCall's api.jsonl spells its enums only in prose; as ``enum`` they become choices the
    model can point at instead of values it would have to produce."""
    m = re.search(r"possible values|available options|one of the following", description, re.IGNORECASE)
    if not m:
        return None
    options = list(dict.fromkeys(re.findall(r'"([^"\s]+)"', description[m.end():])))
    return options if len(options) >= 2 else None


def droidcall_tool(api: dict) -> dict:
    """An api.jsonl row -> tool dict (types are Python annotations; prose option lists -> enum)."""
    props, required = {}, []
    for pname, p in (api.get("arguments") or {}).items():
        description = p.get("description", "")
        try:
            node = param_node(p.get("type"), description, default=p.get("default"))
        except ValueError as exc:
            raise Reject("unsupported parameter type", f"{api['name']}.{pname}: {exc}") from None
        options = _described_options(description) if node["type"] == "string" else None
        if options:
            node["enum"] = options
        props[pname] = node
        if p.get("required"):
            required.append(pname)
    return function_dict(api["name"], api.get("description", ""), props, required)


_SETTINGS = {
    "ACTION_SETTINGS": "general", "ACTION_WIRELESS_SETTINGS": "wireless",
    "ACTION_AIRPLANE_MODE_SETTINGS": "airplane_mode", "ACTION_WIFI_SETTINGS": "wifi",
    "ACTION_APN_SETTINGS": "apn", "ACTION_BLUETOOTH_SETTINGS": "bluetooth", "ACTION_DATE_SETTINGS": "date",
    "ACTION_LOCALE_SETTINGS": "locale", "ACTION_INPUT_METHOD_SETTINGS": "input_method",
    "ACTION_DISPLAY_SETTINGS": "display", "ACTION_SECURITY_SETTINGS": "security",
    "ACTION_LOCATION_SOURCE_SETTINGS": "location", "ACTION_INTERNAL_STORAGE_SETTINGS": "internal_storage",
    "ACTION_MEMORY_CARD_SETTINGS": "memory_card",
}
# java.util.Calendar numbering, which the generator used ("every weekday" -> [2..6]).
_WEEKDAYS = {1: "Sunday", 2: "Monday", 3: "Tuesday", 4: "Wednesday", 5: "Thursday", 6: "Friday", 7: "Saturday"}
_CONTACT_KEYS = {"NAME": "name", "PHONE": "phone", "EMAIL": "email", "COMPANY": "company", "POSTAL": "address",
                 "FORMATTED_ADDRESS": "address", "ADDRESS": "address"}


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "None", "null", "{}")) or value == {}


def _as_list(value: Any) -> list:
    if _unset(value):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def _alarm_days(numbers: list, query: str) -> list[str]:
    """Alarm day numbers -> day names, checked against the request.

    The generator mixed numberings (java.util.Calendar's Sunday=1 mostly, Monday=1 or 0-based
    sometimes), so a reading is kept only when the request confirms it: it names every day,
    or says "weekdays" for Monday-Friday, or "every day" for all seven."""
    if not numbers:
        return []
    if not all(isinstance(n, int) and 0 <= n <= 7 for n in numbers):
        if all(isinstance(n, str) and n.capitalize() in _WEEKDAYS.values() for n in numbers):
            return [n.capitalize() for n in numbers]
        raise Reject("alarm days disagree with the request", str(numbers))
    text = query.lower()
    if len(set(numbers)) == 7 and re.search(r"every ?(day|night|morning|evening)|daily", text):
        return list(_WEEKDAYS.values())
    names = [_WEEKDAYS.get(n, "?") for n in numbers]
    if all(name.lower() in text for name in names):
        return names
    if set(names) == set(list(_WEEKDAYS.values())[1:6]) and re.search(r"week ?days?|work ?days?", text):
        return names
    raise Reject("alarm days disagree with the request", f"{numbers} for {query[:80]!r}")


def _as_in_request(value: str, query: str) -> str:
    """A phone number spelled the way the request spells it, when the digits agree."""
    digits = re.sub(r"\D", "", value)
    if len(digits) < 3:
        return value
    for m in re.finditer(r"\+?\(?\d[\d\s().-]*\d", query):
        if re.sub(r"\D", "", m.group(0)) == digits:
            return m.group(0).strip()
    return value


class DroidCallMapper:
    """Intent + extras -> (function name, arguments), after DroidCall's api.jsonl semantics."""

    def __call__(self, row: dict) -> tuple[str, dict]:
        intent = row.get("intent")
        extras = row.get("extras") or {}
        if not isinstance(extras, dict):
            raise Reject("extras are not an object", str(extras)[:80])
        extras = {k: v for k, v in extras.items() if not _unset(v)}
        uri = "" if _unset(row.get("uri")) else str(row["uri"]).strip()
        mime = row.get("mime")
        mime = next(iter(mime), "") if isinstance(mime, dict) else ("" if _unset(mime) else str(mime).strip('"'))
        if intent in _SETTINGS:
            return "open_settings", {} if intent == "ACTION_SETTINGS" else {"setting_type": _SETTINGS[intent]}
        method = self.HANDLERS.get(intent)
        if method is None:
            raise Reject("intent has no api.jsonl function", str(intent))
        return method(self, extras, uri, mime, row.get("query", ""))

    def _action_set_alarm(self, ex, uri, mime, query):
        if "EXTRA_HOUR" not in ex:
            raise Reject("call misses a required argument", "EXTRA_HOUR")
        args = {"EXTRA_HOUR": ex["EXTRA_HOUR"], "EXTRA_MINUTES": ex.get("EXTRA_MINUTES", 0)}
        for key in ("EXTRA_MESSAGE", "EXTRA_RINGTONE", "EXTRA_VIBRATE", "EXTRA_SKIP_UI"):
            if key in ex:
                args[key] = ex[key]
        days = _alarm_days(_as_list(ex.get("EXTRA_DAYS")), query)
        if days:
            args["EXTRA_DAYS"] = days
        return "ACTION_SET_ALARM", args

    def _action_set_timer(self, ex, uri, mime, query):
        seconds = ex.get("EXTRA_LENGTH")
        if not isinstance(seconds, int) or seconds <= 0:
            raise Reject("call misses a required argument", f"EXTRA_LENGTH={seconds!r}")
        h, m, s = seconds // 3600, seconds % 3600 // 60, seconds % 60
        parts = [f"{n} {unit}" for n, unit in ((h, "hours"), (m, "minutes"), (s, "seconds")) if n]
        args = {"duration": " ".join(parts)}
        args.update({k: ex[k] for k in ("EXTRA_MESSAGE", "EXTRA_SKIP_UI") if k in ex})
        return "ACTION_SET_TIMER", args

    def _action_show_alarms(self, ex, uri, mime, query):
        return "ACTION_SHOW_ALARMS", {}

    def _action_image_capture(self, ex, uri, mime, query):
        return "ACTION_IMAGE_CAPTURE", {}  # the function returns the URI; EXTRA_OUTPUT has no argument

    def _action_video_capture(self, ex, uri, mime, query):
        return "ACTION_VIDEO_CAPTURE", {}

    def _action_insert(self, ex, uri, mime, query):
        contact = {k.rsplit(".", 1)[-1]: v for k, v in ex.items() if k.startswith("ContactsContract")}
        if contact or "person" in mime or "contact" in mime:
            unknown = sorted(set(contact) - set(_CONTACT_KEYS))
            if unknown:
                raise Reject("contact field has no api.jsonl key", ", ".join(unknown))
            info = {_CONTACT_KEYS[k]: v for k, v in contact.items()}
            if not info:
                raise Reject("call misses a required argument", "contact_info is empty")
            return "ACTION_INSERT_CONTACT", {"contact_info": info}
        if "EXTRA_EVENT_BEGIN_TIME" in ex or "EXTRA_EVENT_END_TIME" in ex:
            raise Reject("event time is an invented timestamp", str(ex.get("EXTRA_EVENT_BEGIN_TIME")))
        for key in ("TITLE", "DESCRIPTION"):
            if key not in ex:
                raise Reject("call misses a required argument", key)
        args = {k: ex[k] for k in ("TITLE", "DESCRIPTION", "EVENT_LOCATION", "EXTRA_EVENT_ALL_DAY") if k in ex}
        if ex.get("EXTRA_EMAIL"):
            args["EXTRA_EMAIL"] = _as_list(ex["EXTRA_EMAIL"])
        return "ACTION_INSERT_EVENT", args

    def _action_pick(self, ex, uri, mime, query):
        kinds = (("Email", "EMAIL"), ("email", "EMAIL"), ("Phone", "PHONE"), ("phone", "PHONE"),
                 ("Postal", "ADDRESS"), ("postal", "ADDRESS"))
        data_type = next((t for key, t in kinds if key in mime), None)
        return "ACTION_PICK", {"data_type": data_type} if data_type else {}

    def _contact_uri(self, uri: str, query: str) -> str:
        if not uri.startswith("content://") or "contact" not in uri:
            raise Reject("intent has no api.jsonl function", f"view/edit {uri[:40]}")
        if uri not in query:
            raise Reject("contact URI invented (not in the request)", uri)
        return uri

    def _action_view(self, ex, uri, mime, query):
        if uri.startswith("geo:"):
            place = parse_qs(uri.partition("?")[2]).get("q")
            if not place:
                raise Reject("map coordinates without a place name", uri)
            return "search_location", {"query": unquote_plus(place[0])}
        return "ACTION_VIEW_CONTACT", {"contact_uri": self._contact_uri(uri, query)}

    def _action_edit(self, ex, uri, mime, query):
        args = {"contact_uri": self._contact_uri(uri, query)}
        if ex:
            unknown = sorted(set(ex) - set(_CONTACT_KEYS.values()))
            if unknown:
                raise Reject("contact field has no api.jsonl key", ", ".join(unknown))
            args["contact_info"] = dict(ex)
        return "ACTION_EDIT_CONTACT", args

    def _send(self, ex, uri, mime, query):
        scheme, _, target = uri.partition(":")
        subject = ex.get("Intent.EXTRA_SUBJECT", ex.get("subject"))
        body = ex.get("Intent.EXTRA_TEXT", ex.get("sms_body"))
        attachments = _as_list(ex.get("Intent.EXTRA_STREAM", ex.get("EXTRA_STREAM")))
        if scheme == "mailto" or "Intent.EXTRA_EMAIL" in ex:
            to = _as_list(ex.get("Intent.EXTRA_EMAIL")) or _as_list(unquote(target.split("?")[0]))
            if not to:
                raise Reject("message without a recipient", uri or "no uri")
            name, args = "send_email", {"to": to, "subject": subject, "body": body}
            for key, arg in (("Intent.EXTRA_CC", "cc"), ("Intent.EXTRA_BCC", "bcc")):
                if ex.get(key):
                    args[arg] = _as_list(ex[key])
        elif scheme in ("sms", "smsto", "mms", "mmsto"):
            number = unquote(target.split("?")[0]).strip()
            if not re.search(r"\d", number) or "<" in number:
                raise Reject("placeholder phone number", uri)
            name, args = "send_message", {"phone_number": _as_in_request(number, query), "subject": subject,
                                          "body": body}
        else:
            raise Reject("message without a recipient", uri or "no uri")
        missing = [k for k in ("subject", "body") if _unset(args[k])]
        if missing:
            raise Reject(f"{name} needs an argument the intent lacks", ", ".join(missing))
        if attachments:
            args["attachments"] = attachments
        return name, args

    def _action_get_content(self, ex, uri, mime, query):
        if not mime:
            raise Reject("call misses a required argument", "mime_type")
        args = {"mime_type": mime}
        if "EXTRA_ALLOW_MULTIPLE" in ex:
            args["allow_multiple"] = ex["EXTRA_ALLOW_MULTIPLE"]
        return "ACTION_GET_CONTENT", args

    def _action_open_document(self, ex, uri, mime, query):
        types = _as_list(ex.get("EXTRA_MIME_TYPES")) or ([mime] if mime else [])
        if not types:
            raise Reject("call misses a required argument", "mime_types")
        args = {"mime_types": types}
        if "EXTRA_ALLOW_MULTIPLE" in ex:
            args["allow_multiple"] = ex["EXTRA_ALLOW_MULTIPLE"]
        return "ACTION_OPEN_DOCUMENT", args

    def _action_create_document(self, ex, uri, mime, query):
        if "EXTRA_TITLE" not in ex or not mime:
            raise Reject("call misses a required argument", "initial_name" if mime else "mime_type")
        return "ACTION_CREATE_DOCUMENT", {"mime_type": mime, "initial_name": ex["EXTRA_TITLE"]}

    def _action_web_search(self, ex, uri, mime, query):
        text = ex.get("SearchManager.QUERY", ex.get("QUERY"))
        if _unset(text):
            raise Reject("call misses a required argument", "query")
        return "web_search", {"query": text}

    def _action_dial(self, ex, uri, mime, query):
        scheme, _, number = uri.partition(":")
        if scheme != "tel" or not re.search(r"\d", number):
            raise Reject("intent has no api.jsonl function", f"dial {uri[:30]}")
        return "dial", {"phone_number": _as_in_request(unquote(number), query)}

    HANDLERS: ClassVar[dict[str, Callable]] = {
        "ACTION_SET_ALARM": _action_set_alarm, "ACTION_SET_TIMER": _action_set_timer,
        "ACTION_SHOW_ALARMS": _action_show_alarms, "ACTION_IMAGE_CAPTURE": _action_image_capture,
        "ACTION_VIDEO_CAPTURE": _action_video_capture, "ACTION_INSERT": _action_insert,
        "ACTION_PICK": _action_pick, "ACTION_VIEW": _action_view, "ACTION_EDIT": _action_edit,
        "ACTION_SEND": _send, "ACTION_SENDTO": _send, "ACTION_SEND_MULTIPLE": _send,
        "ACTION_GET_CONTENT": _action_get_content, "ACTION_OPEN_DOCUMENT": _action_open_document,
        "ACTION_CREATE_DOCUMENT": _action_create_document, "ACTION_WEB_SEARCH": _action_web_search,
        # an in-app search intent; the request is a plain search, so web_search performs it
        "com.google.android.gms.actions.SEARCH_ACTION": _action_web_search,
        "ACTION_DIAL": _action_dial, "ACTION_CALL": _action_dial, "CALL_PHONE": _action_dial,
    }


def import_droidcall(data_dir: Path, report: SourceReport, limit: int | None = None) -> Iterator[tuple[str, Callable]]:
    apis = {}
    for api in iter_jsonl(data_dir / "droidcall" / "api.jsonl"):
        try:
            apis[api["name"]] = droidcall_tool(api)
        except Reject as exc:
            report.notes[f"api.jsonl function skipped: {exc.reason}"] += 1
    mapper = DroidCallMapper()
    for fname in ("machine_generated", "seeds"):
        for i, row in enumerate(islice(iter_jsonl(data_dir / "droidcall" / f"{fname}.jsonl"), limit)):
            rid = f"droidcall/{fname}/{i}"

            def convert(row=row, rid=rid):
                if not isinstance(row.get("query"), str) or not row["query"].strip():
                    raise Reject("record has no query")
                name, args = mapper(row)
                if name not in apis:
                    raise Reject("intent has no api.jsonl function", name)
                return [make_example(messages=[_user(row["query"])], tools=[apis[name]],
                                     calls=[{"name": name, "arguments": args}], source="droidcall",
                                     teacher="gpt-4-turbo", example_id=rid, notes=report.notes)]

            yield rid, convert


# ---- API-Bank level 3 -------------------------------------------------------------------------

APIBANK_FILES = ("lv3-train", "lv3-api-train", "lv3-response-train")


def parse_api_request(text: str, notes: Counter | None = None) -> list[tuple[str, dict]]:
    """``API-Request: [Name(key='value', ...)]`` (Python call syntax) -> [(name, arguments)].

    The recorded requests are not always valid Python: unquoted values (``location=New York``,
    ``code=ABC123``) are read as strings and counted in ``notes``."""
    text = text.strip()
    if text.startswith("API-Request:"):
        text = text[len("API-Request:"):].strip()
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return _loose_api_request(text, notes)
    nodes = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise Reject("API-Request is not call syntax", ast.unparse(node)[:120])
        if node.args or any(kw.arg is None for kw in node.keywords):
            raise Reject("API-Request has positional arguments", ast.unparse(node)[:120])
        args = {}
        for kw in node.keywords:
            try:
                args[kw.arg] = ast.literal_eval(kw.value)
            except ValueError:
                args[kw.arg] = ast.get_source_segment(text, kw.value)
                if notes is not None:
                    notes["unquoted argument values read as strings"] += 1
        calls.append((node.func.id, args))
    return calls


_LOOSE_CALL = re.compile(r"([A-Za-z_]\w*)\((.*)\)", re.DOTALL)


def _loose_api_request(text: str, notes: Counter | None) -> list[tuple[str, dict]]:
    """One call with unquoted values, e.g. ``[FitnessClassAPI(location=New York, day=Monday)]``."""
    inner = text[1:-1].strip() if text.startswith("[") and text.endswith("]") else text
    match = _LOOSE_CALL.fullmatch(inner)
    if not match or re.search(r"\)\s*,\s*[A-Za-z_]\w*\(", inner):
        raise Reject("API-Request is not call syntax", text[:120])
    name, body = match.groups()
    args = {}
    for part in re.split(r",\s*(?=[A-Za-z_]\w*\s*=)", body) if body.strip() else []:
        key, eq, value = part.partition("=")
        if not eq or not key.strip().isidentifier():
            raise Reject("API-Request is not call syntax", text[:120])
        value = value.strip()
        try:
            args[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            args[key.strip()] = value
            if notes is not None:
                notes["unquoted argument values read as strings"] += 1
    return [(name, args)]


def _literal(text: str) -> Any:
    """A Python-literal tool result. The recorder left some unescaped apostrophes inside words
    (``'the user's name'``); they are escaped before giving up and keeping the text."""
    text = text.strip()
    repaired = re.sub(r"(?<=\w)'(?=\w)", r"\\'", text)
    # ... and a bare type name as a value ({'type': str}) is quoted.
    repaired = re.sub(r"(?<=:\s)(str|int|float|bool|list|dict)(?=\s*[,}])", r"'\1'", repaired)
    for candidate in (text, repaired):
        try:
            return ast.literal_eval(candidate)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
    return text


def apibank_tool(spec: dict) -> dict:
    """A tool as API-Bank writes it (``apiCode``/``parameters`` or ``name``/``input_parameters``).

    API-Bank lists inputs without a required flag; they are all taken as required, since its
    calls fill every listed input (a call that does not is rejected and counted)."""
    name = spec.get("apiCode") or spec.get("name")
    params = spec.get("parameters") or spec.get("input_parameters") or {}
    if isinstance(params, (set, list, tuple, str)) and set(map(str, params)) <= {"none", "None", ""}:
        params = {}  # API-Bank writes {'none'} for "no inputs"
    if not isinstance(params, dict):
        raise Reject("tool parameters are not an object", f"{name}: {params!r}"[:200])
    props = {}
    for pname, p in params.items():
        p = p if isinstance(p, dict) else {}
        try:
            props[pname] = param_node(p.get("type"), p.get("description", ""))
        except ValueError as exc:
            raise Reject("unsupported parameter type", f"{name}.{pname}: {exc}") from None
    return function_dict(str(name), spec.get("description", ""), props, list(props))


def _apibank_lines(text: str) -> list[str]:
    """Input lines, with continuation lines (a multi-line result or utterance) joined back."""
    starts = ("API-Request:", "AI:", "User:", "Generate API Request", "Generate AI Response", "{\"apiCode\"")
    lines: list[str] = []
    for line in text.split("\n"):
        if lines and not line.startswith(starts):
            lines[-1] += "\n" + line
        else:
            lines.append(line)
    return [ln for ln in lines if ln.strip()]


def _discovered_tools(result: Any) -> list[dict]:
    """Tool definitions inside a ToolSearcher result (one dict or a list of them)."""
    found = result if isinstance(result, list) else [result]
    return [r for r in found if isinstance(r, dict) and isinstance(r.get("name"), str)
            and ("input_parameters" in r or "description" in r)]


def import_apibank(data_dir: Path, report: SourceReport, limit: int | None = None) -> Iterator[tuple[str, Callable]]:
    for fname in APIBANK_FILES:
        for i, row in enumerate(islice(_load_json(data_dir / "apibank_lv3" / f"{fname}.json"), limit)):
            rid = f"apibank_lv3/{fname}/{i}"

            def convert(row=row, rid=rid):
                ids, messages, tools = _CallIds(), [], []
                for line in _apibank_lines(row["input"]):
                    if line.startswith("{\"apiCode\""):
                        try:
                            tools.append(apibank_tool(json.loads(line)))
                        except json.JSONDecodeError as exc:
                            raise Reject("API description is not JSON", str(exc)) from None
                    elif line.startswith("User:"):
                        utterance, _, when = line[len("User:"):].partition("TIME:")
                        if when.strip():
                            messages.append({"role": "system", "content": f"The current time is {when.strip()}."})
                        messages.append(_user(utterance.strip()))
                    elif line.startswith("API-Request:"):
                        # "API-Request: [Name(...)]->result"; the brackets are sometimes missing.
                        m = re.match(r"API-Request:\s*\[?(.*?\))\]?\s*->(.*)$", line, re.DOTALL)
                        if not m:
                            raise Reject("history request without a result", line[:120])
                        request, result = m.groups()
                        calls = [ids.call(n, a) for n, a in parse_api_request(f"[{request}]", report.notes)]
                        messages.append(_assistant(calls))
                        value = _literal(result)
                        for call in calls:
                            messages.append(_tool_result(call, value))
                        for spec in _discovered_tools(value):
                            tool = apibank_tool(spec)
                            if all(t["name"] != tool["name"] for t in tools):
                                tools.append(tool)
                    elif line.startswith("AI:"):
                        messages.append(_assistant(content=line[len("AI:"):].strip()))
                    elif not line.startswith(("Generate API Request", "Generate AI Response")):
                        raise Reject("unrecognised input line", line[:80])
                if not messages:
                    raise Reject("record has no query")
                output = row["output"].strip()
                if output.startswith("API-Request:"):
                    calls = parse_api_request(output, report.notes)
                elif output.startswith("AI:"):
                    calls = []
                else:
                    raise Reject("output is neither an API-Request nor an AI reply", output[:80])
                return [make_example(messages=messages, tools=tools,
                                     calls=[{"name": n, "arguments": a} for n, a in calls],
                                     source="apibank_lv3", teacher="chatgpt (multi-agent)", example_id=rid,
                                     notes=report.notes)]

            yield rid, convert


# ---- driver -----------------------------------------------------------------------------------

IMPORTERS: dict[str, Callable[..., Iterator[tuple[str, Callable[[], list[dict]]]]]] = {
    "seal_tools": import_seal_tools,
    "toolrl": import_toolrl,
    "glaive_demo": import_glaive,
    "nestful": import_nestful,
    "droidcall": import_droidcall,
    "apibank_lv3": import_apibank,
}


def _dedupe_key(ex: dict) -> str:
    return json.dumps([ex["messages"], sorted(t["name"] for t in ex["tools"]), ex["calls"]], sort_keys=True)


def import_source(source: str, data_dir: str | Path, limit: int | None = None,
                  progress: bool = True) -> tuple[list[dict], SourceReport]:
    """Run one importer; returns (kept examples, report). ``limit`` caps records read per file."""
    if source not in IMPORTERS:
        raise ValueError(f"unknown source {source!r} (known: {', '.join(IMPORTERS)})")
    data_dir = Path(data_dir)
    if not (data_dir / source).is_dir():
        raise FileNotFoundError(f"{data_dir / source} not found: is --data-dir the shared data folder?")
    report, kept, seen = SourceReport(source), [], set()
    records = IMPORTERS[source](data_dir, report, limit)
    for rid, convert in tqdm(records, desc=source, unit="rec", disable=not progress, mininterval=1):
        report.records += 1
        try:
            examples = convert()
        except Reject as exc:
            report.reject(rid, exc)
            continue
        for ex in examples:
            key = _dedupe_key(ex)
            if key in seen:
                report.reject(ex["id"], Reject("duplicate of an earlier example", ex["id"]))
                continue
            seen.add(key)
            kept.append(ex)
    report.kept = len(kept)
    return kept, report


def import_all(data_dir: str | Path = DEFAULT_DATA_DIR, out_path: str | Path | None = None,
               sources: Iterable[str] | None = None, limit: int | None = None, progress: bool = True) -> dict:
    """Import every (or the named) source, write one JSONL (when ``out_path`` is given) and
    return the report: ``{source: {records, kept, rejected: {reason: n}, notes, samples}}``
    plus ``"total"`` and ``"out"``."""
    names = list(sources) if sources else list(IMPORTERS)
    all_examples, report = [], {}
    for name in names:
        examples, rep = import_source(name, data_dir, limit=limit, progress=progress)
        all_examples.extend(examples)
        report[name] = rep.as_dict()
    report["total"] = {"records": sum(report[n]["records"] for n in names), "kept": len(all_examples),
                       "rejected": sum(sum(report[n]["rejected"].values()) for n in names)}
    if out_path is not None:
        write_jsonl(out_path, all_examples)
        report["out"] = str(out_path)
    return report


def format_report(report: dict) -> str:
    """The per-source table `needle import` prints."""
    lines = [f"{'source':<14}{'records':>9}{'kept':>8}{'rejected':>10}", "-" * 41]
    details = []
    for name, rep in report.items():
        if name in ("total", "out"):
            continue
        rejected = sum(rep["rejected"].values())
        lines.append(f"{name:<14}{rep['records']:>9}{rep['kept']:>8}{rejected:>10}")
        for reason, n in rep["rejected"].items():
            details.append(f"  {name:<14} rejected {n:>5}  {reason}")
        for note, n in rep["notes"].items():
            details.append(f"  {name:<14} note     {n:>5}  {note}")
    total = report.get("total")
    if total:
        lines += ["-" * 41, f"{'total':<14}{total['records']:>9}{total['kept']:>8}{total['rejected']:>10}"]
    if details:
        lines += ["", "by reason (rejections count records; duplicates count examples):", *details]
    if report.get("out"):
        lines += ["", f"wrote {report['out']}"]
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="the shared data folder (default: ../shared/data, relative to the current folder)")
    parser.add_argument("--out", default="runs/data/imported.jsonl", help="output JSONL (default: %(default)s)")
    parser.add_argument("--sources", nargs="+", choices=list(IMPORTERS), default=None,
                        help="import only these sources (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="read at most N records per source file")
    parser.add_argument("--report", default=None, help="also write the full report (with samples) as JSON here")


def run(args) -> int:
    report = import_all(args.data_dir, args.out, sources=args.sources, limit=args.limit)
    print(format_report(report))
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0
