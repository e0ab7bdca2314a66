"""Distillation: label or synthesize tool-calling examples with a large LangChain teacher model.

A *teacher* is any LangChain chat model that supports ``bind_tools`` (Gemini through
``langchain-google-genai`` by default, any OpenAI-compatible endpoint through ``langchain-openai``,
or your own ``BaseChatModel`` via ``"module:attr"``). It is used two ways:

1. **label** (`label_queries`): each request is sent to ``teacher.bind_tools(specs)`` and the
   calls are read from ``AIMessage.tool_calls``;
2. **synthesize** (`synthesize`): the teacher is first asked, with a plain prompt, for realistic
   requests that need the tools (and a share of off-topic ones that need no call); the requests
   are then labelled as in 1.

Every teacher reply goes through the teacher-output filter (`filter_teacher_calls`), after the
reference system (FIELD-NOTES section 1): declared tools only, required arguments present, types
coerced (`needle_core.schema.validate_call`), argument values grounded in the request
(`is_grounded`), duplicate examples dropped. Rejections are counted per reason.

Runs are resumable: each row has a deterministic id (a hash of the request and the tool names);
rows are appended and flushed one at a time, and a rerun skips the ids already in the output
(and those already rejected, kept in ``<out>.rejects.jsonl``). Synthesized requests are kept in
``<out>.requests.jsonl`` so a rerun labels the same requests instead of paying for new ones.

Output rows are canonical training examples::

    {"messages": [{"role": "user", "content": ...}], "tools": [spec dicts],
     "calls": [{"name": ..., "arguments": {...}}], "source": ..., "teacher": ..., "id": ...}

CLI: ``needle distill --teacher gemini --tools tools.json --queries queries.txt --out data.jsonl``
(or ``--synthesize N`` instead of ``--queries``).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import json
import math
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from needle_core.errors import NeedleError, ToolCallError
from needle_core.messages import normalize_messages

try:
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
except ImportError as _exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "needle distill needs langchain-core: pip install 'needle[langchain]' (or pip install langchain-core)"
    ) from _exc

__all__ = [
    "TeacherError",
    "DistillReport",
    "make_teacher",
    "label_queries",
    "alabel_queries",
    "synthesize",
    "asynthesize",
    "filter_teacher_calls",
    "is_grounded",
    "ungrounded_arguments",
    "row_id",
    "read_queries",
    "load_tools_file",
    "add_arguments",
    "run",
]

DEFAULT_GEMINI_MODEL = "gemini-2.5-flash"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"

DEFAULT_SYSTEM_PROMPT = (
    "You are a function-calling assistant. Call the tools that the user's request needs, with "
    "argument values copied from the request wherever the request states them. Make several calls "
    "when the request asks for several things. If no tool fits the request, reply briefly without "
    "calling any tool."
)

# Rejection reasons (keys of DistillReport.rejected).
UNDECLARED_TOOL = "undeclared_tool"
MISSING_REQUIRED = "missing_required"
UNDECLARED_ARGUMENT = "undeclared_argument"  # a key the tool does not declare (the student cannot emit it)
INVALID_ARGUMENTS = "invalid_arguments"
UNGROUNDED_VALUE = "ungrounded_value"
INVALID_TOOL_CALL = "invalid_tool_call"      # the teacher's reply had unparseable calls
DUPLICATE = "duplicate"                      # same request + calls as an earlier row
OFFTOPIC_CALLED = "offtopic_called"          # a synthesized off-topic request got a call
TEACHER_ERROR = "teacher_error"              # retries exhausted (not recorded: retried on rerun)

_SENTINEL = object()


class TeacherError(NeedleError):
    """A teacher cannot be built or keeps failing (missing package, missing API key, ...)."""


# --------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------

def make_teacher(name: str = "gemini", **kw: Any):
    """Build a teacher chat model.

    ``name`` is ``"gemini"`` (``ChatGoogleGenerativeAI``, default model ``gemini-2.5-flash``,
    key in ``GOOGLE_API_KEY``), ``"openai"`` (``ChatOpenAI``; pass ``base_url=...`` for any
    OpenAI-compatible endpoint, key in ``OPENAI_API_KEY``, optional with a custom ``base_url``),
    or ``"module:attr"`` naming a ``BaseChatModel`` class, a factory function (called with
    ``**kw``) or a ready instance. The provider packages are imported only when chosen.
    Raises `TeacherError` naming the missing pip package or environment variable.
    """
    kw = {k: v for k, v in kw.items() if v is not None}
    key = name.strip().lower()
    if key in ("gemini", "google", "google-genai"):
        try:
            from langchain_google_genai import ChatGoogleGenerativeAI
        except ImportError:
            raise TeacherError(
                "teacher 'gemini' needs the package langchain-google-genai: pip install langchain-google-genai"
            ) from None
        has_key = any(k in kw for k in ("api_key", "google_api_key", "credentials")) or kw.get("vertexai")
        if not has_key and not (os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")):
            raise TeacherError(
                "teacher 'gemini' needs an API key: set the environment variable GOOGLE_API_KEY "
                "(or GEMINI_API_KEY), or pass api_key=..."
            )
        if "api_key" not in kw and "google_api_key" not in kw and not os.environ.get("GOOGLE_API_KEY") \
                and os.environ.get("GEMINI_API_KEY"):
            kw["google_api_key"] = os.environ["GEMINI_API_KEY"]
        kw.setdefault("model", DEFAULT_GEMINI_MODEL)
        return ChatGoogleGenerativeAI(**kw)
    if key in ("openai", "openai-compatible"):
        try:
            from langchain_openai import ChatOpenAI
        except ImportError:
            raise TeacherError(
                "teacher 'openai' needs the package langchain-openai: pip install langchain-openai"
            ) from None
        custom_endpoint = bool(kw.get("base_url") or os.environ.get("OPENAI_BASE_URL"))
        if "api_key" not in kw and not os.environ.get("OPENAI_API_KEY"):
            if not custom_endpoint:
                raise TeacherError(
                    "teacher 'openai' needs an API key: set the environment variable OPENAI_API_KEY, "
                    "or pass api_key=... (or base_url=... for a local OpenAI-compatible server)"
                )
            kw["api_key"] = "not-needed"  # local servers (vLLM, llama.cpp, Ollama) ignore it
        kw.setdefault("model", DEFAULT_OPENAI_MODEL)
        return ChatOpenAI(**kw)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise TeacherError(f"teacher {name!r}: cannot import module {module_name!r} ({exc})") from None
        obj: Any = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise TeacherError(f"teacher {name!r}: module {module_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        model = obj(**kw) if (isinstance(obj, type) or (callable(obj) and not hasattr(obj, "bind_tools"))) else obj
        if not hasattr(model, "bind_tools") or not hasattr(model, "ainvoke"):
            raise TeacherError(
                f"teacher {name!r} gave a {type(model).__name__}, not a LangChain chat model with bind_tools"
            )
        return model
    raise TeacherError(f"unknown teacher {name!r}: use 'gemini', 'openai' or 'module:attr'")


def teacher_label(teacher: Any) -> str:
    """A short name for the ``teacher`` field of rows: the model name, else the class name."""
    for attr in ("model_name", "model"):
        value = getattr(teacher, attr, None)
        if isinstance(value, str) and value:
            return value.removeprefix("models/")
    return type(teacher).__name__


# --------------------------------------------------------------------------------------------
# The teacher-output filter
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?|(?<![\w.])[-+]?\.\d+")
# Words that do not count as overlap when a value has other words ("the report" is not grounded
# by "the" alone).
STOPWORDS = frozenset(
    "a an the of to in on at for and or is are was be by with from as it its this that these those "
    "my me i you your we our us he she they them his her their please can could would will".split()
)
NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "hundred": 100, "thousand": 1000, "dozen": 12, "once": 1, "twice": 2, "single": 1,
    "double": 2, "half": 0.5,
}


def _words(text: str) -> set[str]:
    return {w.casefold() for w in _WORD.findall(text)}


def _numbers(text: str) -> set[float]:
    found: set[float] = set()
    for match in _NUMBER.findall(text):
        try:
            found.add(float(match.replace(",", "")))
        except ValueError:
            pass
    for word in _words(text):
        if word in NUMBER_WORDS:
            found.add(float(NUMBER_WORDS[word]))
    return found


def _has_unspaced_script(text: str) -> bool:
    """CJK and similar scripts write words without spaces, so word overlap does not apply."""
    return any(ord(ch) >= 0x2E80 for ch in text)


def is_grounded(value: Any, request: str) -> bool:
    """The grounding rule of the teacher-output filter, for one scalar argument value.

    A value is *grounded* in the request text when:

    - it is ``None`` or a boolean: always (nothing to copy);
    - it is a number: the request contains the same number, written in digits (``1,000`` and
      ``1000.0`` both match 1000) or as a simple number word ("two", "twelve", "dozen");
    - it is a string: it shares at least one word with the request, compared case-insensitively
      on letter/digit runs; stopwords ("the", "of", "my", ...) do not count unless the value
      has nothing else. Strings in scripts written without spaces (CJK, Thai, ...) are grounded
      when they occur in the request as a substring; strings with no letters or digits at all
      (punctuation) when they occur verbatim.

    Other types are grounded (containers are walked by `ungrounded_arguments`). Enum options are
    exempt too, but that needs the schema: see `ungrounded_arguments`. The rule is deliberately
    loose (word overlap, not exact spans): it catches invented values, not paraphrases.
    """
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return float(value) in _numbers(request)
    if not isinstance(value, str):
        return True
    text = value.strip()
    if not text:
        return False
    request_cf = request.casefold()
    value_words = _words(text)
    if not value_words or _has_unspaced_script(text):
        return text.casefold() in request_cf or bool(_content(value_words) & _words(request))
    return bool(_content(value_words) & _words(request))


def _content(words: set[str]) -> set[str]:
    content = words - STOPWORDS
    return content or words


def _exempt(value: Any, schema: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if not isinstance(schema, dict):
        return False
    if "const" in schema and schema["const"] == value:
        return True
    enum = schema.get("enum")
    if isinstance(enum, list) and value in enum:
        return True
    if schema.get("type") == "boolean":
        return True
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and any(_exempt(value, b) for b in branches if isinstance(b, dict)):
            return True
    return False


def ungrounded_arguments(arguments: dict[str, Any], parameters: dict[str, Any] | None, request: str) -> list[str]:
    """Paths (``city``, ``stops[1]``, ``filter.name``) of argument values that fail `is_grounded`.

    Values inside lists and objects are checked one by one; values that are one of the
    parameter's ``enum`` options (or its ``const``) and booleans are exempt.
    """
    out: list[str] = []
    props = (parameters or {}).get("properties") or {}
    for key, value in arguments.items():
        _walk(value, props.get(key) or {}, request, key, out)
    return out


def _walk(value: Any, schema: Any, request: str, path: str, out: list[str]) -> None:
    if _exempt(value, schema):
        return
    schema = schema if isinstance(schema, dict) else {}
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            _walk(v, props.get(k) or (extra if isinstance(extra, dict) else {}), request, f"{path}.{k}", out)
    elif isinstance(value, (list, tuple)):
        items = schema.get("items") or {}
        for i, v in enumerate(value):
            _walk(v, items if isinstance(items, dict) else {}, request, f"{path}[{i}]", out)
    elif not is_grounded(value, request):
        out.append(path)


def _as_specs(tools: Iterable[Any]) -> list[Any]:
    """`ToolSpec` list from tools in any form (specs pass through unchanged)."""
    from needle_core.schema import ToolSpec, to_tool_specs

    tools = list(tools)
    if tools and all(isinstance(t, ToolSpec) for t in tools):
        return tools
    return to_tool_specs(tools)


def _spec_map(specs: Iterable[Any]) -> dict[str, Any]:
    return {spec.name: spec for spec in specs}


def _request_text(query: Any) -> str:
    if isinstance(query, str):
        return query
    return "\n".join(str(m.get("content") or "") for m in normalize_messages(query))


def filter_teacher_calls(query: Any, calls: list[dict[str, Any]], specs: list[Any]) -> tuple[list[dict[str, Any]], str | None]:
    """Apply the teacher-output filter to one teacher reply.

    ``query`` is the request (a string or a message list), ``calls`` the teacher's calls as dicts
    with ``name`` and ``arguments`` (LangChain's ``args`` is accepted too), ``specs`` the
    `ToolSpec` list. Returns ``(kept_calls, None)`` with the calls in canonical form
    ``{"name", "arguments"}`` (arguments coerced to the declared types, repeated identical calls
    merged), or ``([], reason)`` when the example must be dropped: one bad call spoils the whole
    example, since dropping it would leave a wrong label. Reasons, checked in this order:
    ``undeclared_tool``, ``missing_required`` (absent or null), ``undeclared_argument`` (a key
    the tool does not declare, unless its parameters allow ``additionalProperties``),
    ``invalid_arguments`` (`validate_call` failed: a type that cannot be coerced, a broken
    constraint, non-object arguments), ``ungrounded_value`` (see `ungrounded_arguments`).
    Duplicates across examples are dropped by the labelling loop, not here.
    """
    from needle_core.schema import validate_call

    specs = list(specs)
    by_name = _spec_map(specs)
    request = _request_text(query)
    kept: list[dict[str, Any]] = []
    seen: set[str] = set()
    for call in calls:
        name = call.get("name")
        args = call.get("arguments", call.get("args", {}))
        if args is None:
            args = {}
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                return [], INVALID_ARGUMENTS
        if name not in by_name:
            return [], UNDECLARED_TOOL
        if not isinstance(args, dict):
            return [], INVALID_ARGUMENTS
        parameters = by_name[name].parameters or {}
        required = parameters.get("required") or []
        if any(args.get(r) is None for r in required):
            return [], MISSING_REQUIRED
        declared = parameters.get("properties") or {}
        if not parameters.get("additionalProperties") and any(k not in declared for k in args):
            return [], UNDECLARED_ARGUMENT
        try:
            coerced = validate_call(name, args, specs)
        except ToolCallError:
            return [], INVALID_ARGUMENTS
        if ungrounded_arguments(coerced, parameters, request):
            return [], UNGROUNDED_VALUE
        canonical = {"name": name, "arguments": coerced}
        key = json.dumps(canonical, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            kept.append(canonical)
    return kept, None


# --------------------------------------------------------------------------------------------
# Rows, ids and files
# --------------------------------------------------------------------------------------------

def row_id(messages: Any, tool_names: Iterable[str]) -> str:
    """Deterministic id of an example: a hash of the request and the sorted tool names."""
    msgs = normalize_messages(messages)
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        request: Any = msgs[0]["content"].strip()
    else:
        request = [{k: v for k, v in m.items() if k != "tool_call_id"} for m in msgs]
    blob = json.dumps({"request": request, "tools": sorted(tool_names)}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def _dedup_key(messages: list[dict[str, Any]], calls: list[dict[str, Any]]) -> bytes:
    """Hash of the request (case and spacing folded) and its calls: equal for duplicate examples."""
    text = " ".join(" ".join(str(m.get("content") or "").split()).casefold() for m in messages)
    blob = text + "\x00" + json.dumps(calls, sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(blob.encode("utf-8"), digest_size=16).digest()


def _iter_jsonl(path: Path, *, repair: bool = False) -> Iterator[dict[str, Any]]:
    """Stream the rows of a JSON-lines file. With ``repair``, a torn last line (a crash in the
    middle of a write: no newline, not JSON) is cut off, and a complete last row missing its
    newline gets one, so that appending is safe. Other lines that are not JSON are skipped
    with a warning."""
    if not path.exists():
        return
    offset = 0
    torn_at: int | None = None
    needs_newline = False
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            start, offset = offset, offset + len(raw)
            complete = raw.endswith(b"\n")
            stripped = raw.strip()
            if not stripped:
                continue
            try:
                row = json.loads(stripped)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if not complete:
                    torn_at = start
                    break
                print(f"needle distill: {path}: line {n} is not JSON, ignored", file=sys.stderr)
                continue
            needs_newline = not complete
            if isinstance(row, dict):
                yield row
    if torn_at is not None:
        print(f"needle distill: {path}: {'cutting off' if repair else 'ignoring'} a torn last line "
              f"left by an interrupted run", file=sys.stderr)
        if repair:
            with path.open("r+b") as fh:
                fh.truncate(torn_at)
    elif needs_newline and repair:
        with path.open("ab") as fh:
            fh.write(b"\n")


def _read_jsonl(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    return list(_iter_jsonl(path, repair=repair))


class _JsonlAppender:
    """Append one JSON row per line, flushed at once: a killed process loses at most the row being
    written (a torn line that the next run cuts off). ``fsync`` also survives an OS crash, at a
    cost per row."""

    def __init__(self, path: Path, fsync: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = path.open("a", encoding="utf-8")
        self.fsync = fsync

    def write(self, row: dict[str, Any]) -> None:
        self.fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.fh.flush()
        if self.fsync:
            try:
                os.fsync(self.fh.fileno())
            except OSError:
                pass

    def close(self) -> None:
        self.fh.close()


def load_tools_file(path: str | Path) -> list[Any]:
    """Tool specs from a JSON file: a list of tools in any form `to_tool_specs` accepts
    (or an object with a ``"tools"`` list)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NeedleError(f"tools file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise NeedleError(f"tools file {str(path)!r} is not JSON: {exc}") from None
    if isinstance(data, dict) and "tools" in data:
        data = data["tools"]
    if not isinstance(data, list) or not data:
        raise NeedleError(f"tools file {str(path)!r} must hold a non-empty JSON list of tools")
    return _as_specs(data)


def read_queries(path: str | Path) -> list[Any]:
    """Requests from a file: plain text (one request per non-empty line), or JSON lines
    (``.jsonl``) whose rows are strings or objects with ``messages`` or
    ``query``/``request``/``text``/``question`` (canonical training rows work: only their
    messages are used)."""
    p = Path(path)
    if not p.exists():
        raise NeedleError(f"queries file {str(path)!r} does not exist")
    if p.suffix.lower() not in (".jsonl", ".ndjson"):
        return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    out: list[Any] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise NeedleError(f"queries file {str(path)!r} line {n}: not JSON ({exc})") from None
        if isinstance(row, str):
            out.append(row)
            continue
        if isinstance(row, dict):
            if "messages" in row:
                out.append({"messages": row["messages"], "uses_tools": row.get("uses_tools")})
                continue
            for key in ("query", "request", "text", "question"):
                if isinstance(row.get(key), str):
                    out.append({"query": row[key], "uses_tools": row.get("uses_tools")})
                    break
            else:
                raise NeedleError(f"queries file {str(path)!r} line {n}: no 'messages' or 'query' field")
            continue
        raise NeedleError(f"queries file {str(path)!r} line {n}: expected a string or an object")
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

@dataclass
class DistillReport:
    """What a run did: counts, rejections per reason, tokens and estimated cost."""

    total: int = 0                 # requests in this run's input
    skipped: int = 0               # already decided by an earlier run (resume)
    kept: int = 0                  # rows written
    rejected: Counter = field(default_factory=Counter)
    requests: int = 0              # teacher requests made (including retries and synthesis)
    input_tokens: int = 0
    output_tokens: int = 0
    price_per_mtok: float = 0.0
    output_price_per_mtok: float | None = None
    synthesized: int = 0           # requests written by `synthesize` in this run

    @property
    def cost(self) -> float:
        out_price = self.price_per_mtok if self.output_price_per_mtok is None else self.output_price_per_mtok
        return (self.input_tokens * self.price_per_mtok + self.output_tokens * out_price) / 1e6

    @property
    def done(self) -> int:
        return self.skipped + self.kept + sum(self.rejected.values())

    def add_usage(self, message: Any) -> None:
        usage = getattr(message, "usage_metadata", None) or {}
        self.input_tokens += int(usage.get("input_tokens") or 0)
        self.output_tokens += int(usage.get("output_tokens") or 0)

    def summary(self) -> str:
        lines = [
            f"distill: {self.kept} rows written, {sum(self.rejected.values())} rejected, "
            f"{self.skipped} already done (of {self.total} requests)"
            + (f"; {self.synthesized} requests synthesized" if self.synthesized else ""),
            f"  teacher requests {self.requests}, tokens in {self.input_tokens:,} out {self.output_tokens:,}, "
            f"estimated cost ${self.cost:.4f}",
        ]
        if self.rejected:
            lines.append("  rejected by reason:")
            for reason, count in self.rejected.most_common():
                lines.append(f"    {reason:<18} {count}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Calling the teacher
# --------------------------------------------------------------------------------------------

def _to_langchain(messages: list[dict[str, Any]], system_prompt: str | None) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    if system_prompt:  # one leading system message (some providers accept no other)
        lead = [m for m in messages[:1] if m["role"] == "system"]
        text = system_prompt + ("\n\n" + str(lead[0].get("content") or "") if lead else "")
        out.append(SystemMessage(content=text))
        messages = messages[len(lead):]
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "system":
            out.append(SystemMessage(content=content))
        elif role == "user":
            out.append(HumanMessage(content=content))
        elif role == "assistant":
            calls = [{"name": c["name"], "args": c.get("arguments") or {}, "id": c.get("id") or f"call_{i}",
                      "type": "tool_call"} for i, c in enumerate(m.get("tool_calls") or [])]
            out.append(AIMessage(content=content, tool_calls=calls))
        else:
            out.append(ToolMessage(content=content, tool_call_id=m.get("tool_call_id") or "call_0",
                                   name=m.get("name") or None))
    return out


def _message_text(message: Any) -> str:
    text = getattr(message, "text", None)
    if callable(text) and not isinstance(text, str):
        text = text()
    if isinstance(text, str):
        return str(text)
    content = getattr(message, "content", "")
    if isinstance(content, str):
        return content
    return "".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content if isinstance(p, (str, dict)))


class _Caller:
    """Retries with exponential backoff, a per-request timeout, and usage accounting."""

    def __init__(self, report: DistillReport, *, max_retries: int, base_delay: float, max_delay: float,
                 timeout: float | None):
        self.report = report
        self.max_retries = max(0, int(max_retries))
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.last_error: BaseException | None = None

    async def __call__(self, runnable: Any, messages: list[BaseMessage], parse=None):
        """Invoke with retries; ``parse(message)`` may raise to ask for a retry. Returns the
        (parsed) result, or ``_SENTINEL`` when every try failed."""
        for attempt in range(self.max_retries + 1):
            try:
                self.report.requests += 1
                coro = runnable.ainvoke(messages)
                reply = await (asyncio.wait_for(coro, self.timeout) if self.timeout else coro)
                self.report.add_usage(reply)
                return parse(reply) if parse else reply
            except Exception as exc:  # noqa: BLE001 - any teacher failure is retried
                self.last_error = exc
                if attempt == self.max_retries:
                    break
                delay = min(self.max_delay, self.base_delay * (2 ** attempt))
                if delay > 0:
                    await asyncio.sleep(delay * (0.5 + random.random() / 2))
        return _SENTINEL


def _progress_bar(progress: bool, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="ex", disable=not progress,
                dynamic_ncols=True, file=sys.stderr)


def _set_postfix(bar, report: DistillReport, processed: int, remaining: int) -> None:
    if bar.disable:
        return
    est = report.cost + (report.cost / processed * remaining if processed else 0.0)
    bar.set_postfix_str(
        f"kept={report.kept} rej={sum(report.rejected.values())} "
        f"cost=${report.cost:.4f} est=${est:.4f}", refresh=False)


def _normalize_item(item: Any) -> tuple[list[dict[str, Any]], bool | None]:
    uses_tools = None
    if isinstance(item, dict) and ("messages" in item or "query" in item):
        uses_tools = item.get("uses_tools")
        item = item["messages"] if "messages" in item else item["query"]
    messages = normalize_messages(item)
    return [{k: v for k, v in m.items() if not (k == "tool_calls" and not v)} for m in messages], uses_tools


def _run_sync(coro):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:  # called from a running loop (e.g. Jupyter)
        return pool.submit(asyncio.run, coro).result()


def _default_sidecar(out_path: Path, suffix: str) -> Path:
    return out_path.with_name(out_path.name + suffix)


# --------------------------------------------------------------------------------------------
# Label
# --------------------------------------------------------------------------------------------

async def alabel_queries(
    teacher: Any,
    queries: Iterable[Any],
    tools: list[Any],
    out_path: str | Path,
    *,
    concurrency: int = 4,
    max_retries: int = 3,
    price_per_mtok: float = 0.0,
    output_price_per_mtok: float | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    source: str = "distill",
    teacher_name: str | None = None,
    rejects_path: str | Path | None = _SENTINEL,  # type: ignore[assignment]
    request_timeout: float | None = 120.0,
    retry_base_delay: float = 1.0,
    retry_max_delay: float = 60.0,
    max_consecutive_failures: int = 25,
    progress: bool = True,
    print_summary: bool = True,
    report: DistillReport | None = None,
) -> DistillReport:
    """Async `label_queries`."""
    specs = _as_specs(tools)
    tool_names = [s.name for s in specs]
    tool_dicts = [s.to_dict() for s in specs]
    bound = teacher.bind_tools([s.to_openai() for s in specs])
    name = teacher_name or teacher_label(teacher)
    out_path = Path(out_path)
    rejects = _default_sidecar(out_path, ".rejects.jsonl") if rejects_path is _SENTINEL else (
        Path(rejects_path) if rejects_path else None)

    report = report or DistillReport()
    report.price_per_mtok, report.output_price_per_mtok = price_per_mtok, output_price_per_mtok

    done_ids: set[str] = set()
    dedup: set[bytes] = set()
    for r in _iter_jsonl(out_path, repair=True):
        if "id" in r:
            done_ids.add(r["id"])
        dedup.add(_dedup_key(r.get("messages") or [], r.get("calls") or []))
    if rejects is not None:
        done_ids.update(r["id"] for r in _iter_jsonl(rejects, repair=True) if "id" in r)

    items = [_normalize_item(q) for q in queries]
    report.total += len(items)
    skipped = 0
    todo: list[tuple[str, list[dict[str, Any]], bool | None]] = []
    for messages, uses_tools in items:
        rid = row_id(messages, tool_names)
        if rid in done_ids:
            skipped += 1
            continue
        todo.append((rid, messages, uses_tools))
    report.skipped += skipped

    caller = _Caller(report, max_retries=max_retries, base_delay=retry_base_delay, max_delay=retry_max_delay,
                     timeout=request_timeout)
    writer = _JsonlAppender(out_path)
    reject_writer = _JsonlAppender(rejects) if rejects is not None else None
    bar = _progress_bar(progress, len(items), skipped, "distill")
    state = {"processed": 0, "consecutive_failures": 0}
    in_run: set[str] = set()

    def finish_one(reason: str | None) -> None:
        state["processed"] += 1
        if reason:
            report.rejected[reason] += 1
        bar.update(1)
        _set_postfix(bar, report, state["processed"], len(todo) - state["processed"])

    def reject(rid: str, reason: str, messages, raw_calls) -> None:
        if reject_writer is not None:
            reject_writer.write({"id": rid, "reason": reason, "messages": messages, "teacher_calls": raw_calls})
        finish_one(reason)

    async def one(rid: str, messages: list[dict[str, Any]], uses_tools: bool | None) -> None:
        reply = await caller(bound, _to_langchain(messages, system_prompt))
        if reply is _SENTINEL:
            state["consecutive_failures"] += 1
            finish_one(TEACHER_ERROR)
            if state["consecutive_failures"] >= max_consecutive_failures:
                raise TeacherError(
                    f"the teacher failed {state['consecutive_failures']} requests in a row "
                    f"(after {max_retries} retries each); last error: {caller.last_error!r}")
            return
        state["consecutive_failures"] = 0
        raw_calls = [{"name": c.get("name"), "arguments": c.get("args")} for c in (reply.tool_calls or [])]
        if getattr(reply, "invalid_tool_calls", None):
            bad = [{"name": c.get("name"), "arguments": c.get("args"), "error": c.get("error")}
                   for c in reply.invalid_tool_calls]
            return reject(rid, INVALID_TOOL_CALL, messages, raw_calls + bad)
        calls, reason = filter_teacher_calls(messages, raw_calls, specs)
        if reason is None and uses_tools is False and calls:
            reason = OFFTOPIC_CALLED
        if reason is not None:
            return reject(rid, reason, messages, raw_calls)
        key = _dedup_key(messages, calls)
        if key in dedup:
            return reject(rid, DUPLICATE, messages, raw_calls)
        dedup.add(key)
        model_name = (getattr(reply, "response_metadata", None) or {}).get("model_name")
        writer.write({"messages": messages, "tools": tool_dicts, "calls": calls, "source": source,
                      "teacher": teacher_name or (model_name.removeprefix("models/") if model_name else name),
                      "id": rid})
        report.kept += 1
        finish_one(None)

    sem = asyncio.Semaphore(max(1, int(concurrency)))
    tasks: set[asyncio.Task] = set()
    fatal: list[BaseException] = []

    def on_done(task: asyncio.Task) -> None:
        sem.release()
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not fatal:
            fatal.append(task.exception())

    try:
        for rid, messages, uses_tools in todo:
            if rid in in_run:  # the same request twice in the input
                finish_one(DUPLICATE)
                continue
            in_run.add(rid)
            await sem.acquire()
            if fatal:
                sem.release()
                break
            task = asyncio.ensure_future(one(rid, messages, uses_tools))
            tasks.add(task)
            task.add_done_callback(on_done)
        while tasks and not fatal:
            await asyncio.wait(set(tasks), return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()
        writer.close()
        if reject_writer is not None:
            reject_writer.close()
    if fatal:
        raise fatal[0]
    if print_summary:
        print(report.summary(), file=sys.stderr)
    return report


def label_queries(teacher: Any, queries: Iterable[Any], tools: list[Any], out_path: str | Path, **kw: Any) -> DistillReport:
    """Label requests with a teacher and append the kept examples to ``out_path`` (JSON lines).

    ``queries``: strings, message lists, or ``{"query"|"messages": ..., "uses_tools": bool}``
    dicts (``uses_tools=False`` marks an off-topic request: a call on it is rejected).
    ``tools``: tools in any form `needle_core.schema.to_tool_specs` accepts.
    Keyword options: ``concurrency`` (requests in flight), ``max_retries`` (per request, with
    exponential backoff from ``retry_base_delay`` seconds), ``price_per_mtok`` /
    ``output_price_per_mtok`` (USD per million tokens, for the cost estimate),
    ``system_prompt``, ``source``, ``teacher_name``, ``rejects_path`` (default
    ``<out>.rejects.jsonl``; ``None`` keeps no record, so rejected requests are retried on a
    rerun), ``request_timeout`` (seconds), ``max_consecutive_failures`` (abort with
    `TeacherError` after that many requests in a row exhausted their retries, e.g. a bad API
    key), ``progress``, ``print_summary``. Returns a `DistillReport`.

    Resumable: requests whose id is already in ``out_path`` (or the rejects file) are skipped.
    """
    return _run_sync(alabel_queries(teacher, queries, tools, out_path, **kw))


# --------------------------------------------------------------------------------------------
# Synthesize
# --------------------------------------------------------------------------------------------

SYNTH_PROMPT = """You write evaluation data for an assistant that can call these tools (JSON):
{tools}

Write {k} different, realistic requests that users might type to this assistant.
- {k_on} of them should need one or more of the tools. Mostly focus on: {focus}. Spell out in the \
request every value a call would need (names, places, numbers, dates, quantities), the way a real \
user would. Vary length, tone, wording and detail; some requests should need several calls.
- {k_off} of them should need no tool at all: small talk, general knowledge, or tasks none of the \
tools can do (also some that sound close to a tool's topic but that it cannot handle).
Do not number them and do not repeat requests. Batch {batch} of a larger set: be original.
Answer with only a JSON array of objects like {{"request": "...", "uses_tools": true}}."""

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)


def parse_request_list(text: str) -> list[tuple[str, bool | None]]:
    """Parse the teacher's synthesis reply: a JSON array of strings or of objects with
    ``request`` (or ``query``/``text``) and optional ``uses_tools``. Raises ValueError."""
    cleaned = _FENCE.sub("", text.strip())
    start, end = cleaned.find("["), cleaned.rfind("]")
    if start < 0 or end <= start:
        raise ValueError("no JSON array in the teacher's reply")
    data = json.loads(cleaned[start:end + 1])
    if not isinstance(data, list):
        raise ValueError("the teacher's reply is not a JSON array")
    out: list[tuple[str, bool | None]] = []
    for item in data:
        if isinstance(item, str):
            query, uses = item, None
        elif isinstance(item, dict):
            query = next((item[k] for k in ("request", "query", "text") if isinstance(item.get(k), str)), None)
            uses = item.get("uses_tools")
            uses = uses if isinstance(uses, bool) else None
        else:
            continue
        if query and query.strip():
            out.append((" ".join(query.split()), uses))
    if not out:
        raise ValueError("the teacher's reply holds no requests")
    return out


async def asynthesize(
    teacher: Any,
    tools: list[Any],
    n: int,
    out_path: str | Path,
    *,
    batch_size: int = 20,
    offtopic_fraction: float = 0.1,
    requests_path: str | Path | None = _SENTINEL,  # type: ignore[assignment]
    max_rounds: int = 5,
    concurrency: int = 4,
    max_retries: int = 3,
    price_per_mtok: float = 0.0,
    output_price_per_mtok: float | None = None,
    request_timeout: float | None = 120.0,
    retry_base_delay: float = 1.0,
    retry_max_delay: float = 60.0,
    progress: bool = True,
    print_summary: bool = True,
    source: str = "synthetic",
    **label_kw: Any,
) -> DistillReport:
    """Async `synthesize`."""
    specs = _as_specs(tools)
    out_path = Path(out_path)
    req_path = _default_sidecar(out_path, ".requests.jsonl") if requests_path is _SENTINEL else (
        Path(requests_path) if requests_path else None)
    report = DistillReport(price_per_mtok=price_per_mtok, output_price_per_mtok=output_price_per_mtok)

    requests: list[dict[str, Any]] = []
    seen: set[str] = set()
    if req_path is not None:
        for row in _read_jsonl(req_path, repair=True):
            q = row.get("query")
            if isinstance(q, str) and q.casefold() not in seen:
                seen.add(q.casefold())
                requests.append({"query": q, "uses_tools": row.get("uses_tools")})
    req_writer = _JsonlAppender(req_path) if req_path is not None else None

    caller = _Caller(report, max_retries=max_retries, base_delay=retry_base_delay, max_delay=retry_max_delay,
                     timeout=request_timeout)
    tools_json = json.dumps([s.to_dict() for s in specs], ensure_ascii=False, separators=(",", ":"))
    sem = asyncio.Semaphore(max(1, int(concurrency)))
    batch_counter = len(requests) // max(1, batch_size)
    failures = {"n": 0}
    max_consecutive_failures = int(label_kw.get("max_consecutive_failures", 25))
    bar = _progress_bar(progress, n, min(n, len(requests)), "synthesize")

    async def one_batch(b: int, k: int) -> list[tuple[str, bool | None]]:
        k_off = math.floor((b + 1) * k * offtopic_fraction) - math.floor(b * k * offtopic_fraction)
        k_off = max(0, min(k, k_off))
        focus = ", ".join(specs[(b + j) % len(specs)].name for j in range(min(2, len(specs))))
        prompt = SYNTH_PROMPT.format(tools=tools_json, k=k, k_on=k - k_off, k_off=k_off, focus=focus, batch=b + 1)
        async with sem:
            got = await caller(teacher, [HumanMessage(content=prompt)], parse=lambda m: parse_request_list(_message_text(m)))
        if got is _SENTINEL:
            failures["n"] += 1
            if failures["n"] >= max_consecutive_failures:
                raise TeacherError(
                    f"the teacher failed {failures['n']} synthesis prompts in a row (after {max_retries} retries "
                    f"each); last error: {caller.last_error!r}")
            return []
        failures["n"] = 0
        return got

    try:
        rounds_without_progress = 0
        while len(requests) < n and rounds_without_progress < max_rounds:
            need = n - len(requests)
            # a bounded number of prompts per round, so huge N never queues everything at once
            sizes = [min(batch_size, need - i) for i in range(0, need, batch_size)][: max(2, 2 * concurrency)]
            jobs = [one_batch(batch_counter + i, k) for i, k in enumerate(sizes)]
            batch_counter += len(jobs)
            before = len(requests)
            for fut in asyncio.as_completed(jobs):
                for query, uses in await fut:
                    if len(requests) >= n or query.casefold() in seen:
                        continue
                    seen.add(query.casefold())
                    entry = {"query": query, "uses_tools": uses}
                    requests.append(entry)
                    report.synthesized += 1
                    if req_writer is not None:
                        req_writer.write(entry)
                    bar.update(1)
            rounds_without_progress = 0 if len(requests) > before else rounds_without_progress + 1
    finally:
        bar.close()
        if req_writer is not None:
            req_writer.close()
    if len(requests) < n:
        print(f"needle distill: the teacher gave only {len(requests)} distinct requests of {n} asked "
              f"(last error: {caller.last_error!r})", file=sys.stderr)

    return await alabel_queries(
        teacher, requests[:n], specs, out_path, concurrency=concurrency, max_retries=max_retries,
        price_per_mtok=price_per_mtok, output_price_per_mtok=output_price_per_mtok,
        request_timeout=request_timeout, retry_base_delay=retry_base_delay, retry_max_delay=retry_max_delay,
        progress=progress, print_summary=print_summary, source=source, report=report, **label_kw)


def synthesize(teacher: Any, tools: list[Any], n: int, out_path: str | Path, **kw: Any) -> DistillReport:
    """Ask the teacher for ``n`` distinct requests for ``tools`` (about ``offtopic_fraction`` of
    them off-topic, which should get no call), then label them with `label_queries` into
    ``out_path``.

    The requests are kept in ``requests_path`` (default ``<out>.requests.jsonl``), so a rerun
    after a crash reuses them and labels only what is missing. ``n`` counts requests; rows kept
    after the filter are at most ``n``. Other keywords as in `label_queries`, plus
    ``batch_size`` (requests per synthesis prompt) and ``max_rounds`` (extra prompt rounds
    allowed without getting new requests).
    """
    return _run_sync(asynthesize(teacher, tools, n, out_path, **kw))


# --------------------------------------------------------------------------------------------
# CLI: needle distill
# --------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default="gemini",
                        help="'gemini' (default, needs langchain-google-genai and GOOGLE_API_KEY), 'openai' "
                             "(langchain-openai, OPENAI_API_KEY or --base-url), or module:attr of a chat model factory")
    parser.add_argument("--model", help=f"teacher model name (gemini default {DEFAULT_GEMINI_MODEL})")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint for --teacher openai")
    parser.add_argument("--teacher-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra keyword for the teacher constructor (VALUE parsed as JSON when it can be); repeatable")
    parser.add_argument("--tools", required=True, help="JSON file with a list of tool specs (any common form)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--queries", help="requests to label: text file (one per line) or .jsonl")
    source.add_argument("--synthesize", type=int, metavar="N", help="have the teacher write N requests, then label them")
    parser.add_argument("--out", required=True, help="output JSONL (appended; reruns resume)")
    parser.add_argument("--concurrency", type=int, default=4, help="teacher requests in flight (default 4)")
    parser.add_argument("--max-retries", type=int, default=3, help="retries per request, exponential backoff (default 3)")
    parser.add_argument("--retry-delay", type=float, default=1.0, help="first backoff delay in seconds (default 1)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per teacher request (default 120)")
    parser.add_argument("--price-per-mtok", type=float, default=0.0,
                        help="USD per million tokens, for the cost estimate (input tokens; output too unless "
                             "--output-price-per-mtok)")
    parser.add_argument("--output-price-per-mtok", type=float, default=None, help="USD per million output tokens")
    parser.add_argument("--offtopic-fraction", type=float, default=0.1,
                        help="share of synthesized requests that need no tool (default 0.1)")
    parser.add_argument("--batch-size", type=int, default=20, help="requests per synthesis prompt (default 20)")
    parser.add_argument("--source", default=None, help="value of the rows' 'source' field")
    parser.add_argument("--no-system-prompt", action="store_true", help="send the request without the labelling instructions")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_teacher_args(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise NeedleError(f"--teacher-arg {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    try:
        kw = _parse_teacher_args(args.teacher_arg)
        if args.model:
            kw["model"] = args.model
        if args.base_url:
            kw["base_url"] = args.base_url
        specs = load_tools_file(args.tools)
        teacher = make_teacher(args.teacher, **kw)
        common: dict[str, Any] = dict(
            concurrency=args.concurrency, max_retries=args.max_retries, price_per_mtok=args.price_per_mtok,
            output_price_per_mtok=args.output_price_per_mtok, retry_base_delay=args.retry_delay,
            request_timeout=args.timeout, progress=not args.no_progress)
        if args.no_system_prompt:
            common["system_prompt"] = None
        if args.synthesize is not None:
            if args.synthesize <= 0:
                raise NeedleError("--synthesize N needs N > 0")
            synthesize(teacher, specs, args.synthesize, args.out, batch_size=args.batch_size,
                       offtopic_fraction=args.offtopic_fraction, source=args.source or "synthetic", **common)
        else:
            queries = read_queries(args.queries)
            label_queries(teacher, queries, specs, args.out, source=args.source or "distill", **common)
    except NeedleError as exc:
        print(f"needle distill: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"needle distill: interrupted; rerun the same command to resume ({args.out})", file=sys.stderr)
        return 130
    return 0
