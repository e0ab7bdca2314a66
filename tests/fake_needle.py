"""A small deterministic stand-in for `needle_core.Needle`, for the adapters' own tests.

Same interface as the engine (``call``, ``call_batch``, ``acall``, ``model_name``), no model:

- it picks the tool whose name and description share most words with the last user message,
  skipping tools whose results already follow that message (so agent loops end), and calls
  nothing under "auto" when no unused tool shares a word;
- it copies required arguments from that message: numbers for integer/number parameters;
  quoted text, then runs of capitalised words (not a lone one that opens a sentence), then the
  whole message for strings. Like the engine, it never invents a value: a tool whose required
  number has no number to copy is not called (under "required", the next tool is tried, and
  a warning says when none can be called).

Tools may be anything `needle_core.schema.to_tool_specs` converts, as for the engine. Every
request is recorded in ``requests``.
"""

from __future__ import annotations

import re
import time
from typing import Any

from needle_core.messages import normalize_messages
from needle_core.schema import to_tool_specs
from needle_core.types import NeedleResult, ToolCall

_EMPTY: dict[Any, Any] = {"boolean": False, "array": [], "object": {}}
_STOP = {"a", "an", "the", "of", "to", "in", "on", "for", "and", "or", "is", "it", "what", "use", "with", "me", "get"}


def _words(text: str) -> set[str]:
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text).replace("_", " ").lower()
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in re.findall(r"[a-z]+", text)} - _STOP


def _strings(text: str) -> list[str]:
    quoted = re.findall(r"(?<!\w)'([^']+)'(?!\w)|\"([^\"]+)\"", text)
    found = [a or b for a, b in quoted]
    rest = re.sub(r"(?<!\w)'[^']+'(?!\w)|\"[^\"]+\"", " ", text)
    for m in re.finditer(r"[A-Z][\w-]*(?:\s+[A-Z][\w-]*)*", rest):
        opens_sentence = not rest[: m.start()].strip() or rest[: m.start()].rstrip()[-1] in ".!?"
        if " " in m.group() or not opens_sentence:
            found.append(m.group())
    return found


class FakeNeedle:
    model_name = "needle-fake"

    def __init__(self, model_dir: str | None = None, *, confidence: float = 0.9, parallel: bool = False):
        self.model_dir, self.confidence, self.parallel = model_dir, confidence, parallel
        self.requests: list[dict[str, Any]] = []

    def call(self, query_or_messages: Any, tools: Any, tool_choice: str = "auto") -> NeedleResult:
        start = time.perf_counter()
        messages = normalize_messages(query_or_messages)
        fns = [spec.to_dict() for spec in to_tool_specs(tools)]
        self.requests.append({"messages": messages, "tools": [f["name"] for f in fns], "tool_choice": tool_choice})
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
        text = messages[last_user]["content"] if last_user >= 0 else ""
        ids = {c["id"]: c["name"] for m in messages if m["role"] == "assistant" for c in m["tool_calls"]}
        used = {m["name"] or ids.get(m["tool_call_id"]) for m in messages[last_user + 1 :] if m["role"] == "tool"}

        score = {f["name"]: len(_words(f["name"] + " " + f.get("description", "")) & _words(text)) for f in fns}
        unused = sorted((f for f in fns if f["name"] not in used), key=lambda f: -score[f["name"]])
        if tool_choice == "none":
            candidates = []
        elif tool_choice not in ("auto", "required", "any"):
            candidates = [f for f in fns if f["name"] == tool_choice]
        elif tool_choice == "auto":
            candidates = [f for f in unused if score[f["name"]] > 0]
        else:
            candidates = unused + [f for f in fns if f["name"] in used]
        calls: list[ToolCall] = []
        for f in candidates:
            args = self._fill(f.get("parameters") or {}, text)
            if args is not None:
                calls.append(ToolCall(name=f["name"], arguments=args))
            if calls and not self.parallel:
                break
        warnings = (
            [] if calls or tool_choice in ("auto", "none") else ["tool_choice requires a call, but none can be formed"]
        )
        timings = {"total_ms": (time.perf_counter() - start) * 1000}
        return NeedleResult(calls=calls, confidence=self.confidence, timings=timings, warnings=warnings)

    def call_batch(self, requests: list[Any], tools: Any, tool_choice: str = "auto") -> list[NeedleResult]:
        return [self.call(r, tools, tool_choice) for r in requests]

    async def acall(self, query_or_messages: Any, tools: Any, tool_choice: str = "auto") -> NeedleResult:
        return self.call(query_or_messages, tools, tool_choice)

    @staticmethod
    def _fill(schema: dict[str, Any], text: str) -> dict[str, Any] | None:
        """Required arguments copied from ``text``; None when a number has nothing to copy."""
        numbers = re.findall(r"-?\d+(?:\.\d+)?", text)
        strings = _strings(text)
        args: dict[str, Any] = {}
        for name in schema.get("required", []):
            prop = schema.get("properties", {}).get(name, {})
            kind = prop.get("type")
            if kind in ("integer", "number"):
                if not numbers:
                    return None
                value = float(numbers.pop(0))
                args[name] = int(value) if kind == "integer" else value
            elif kind == "string" and "enum" in prop:
                args[name] = next((v for v in prop["enum"] if v.lower() in text.lower()), prop["enum"][0])
            elif kind == "string":
                args[name] = strings.pop(0) if strings else text
            else:
                args[name] = _EMPTY.get(kind)
        return args
