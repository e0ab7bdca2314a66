"""What the LangChain and LlamaIndex adapters share: one turn's routing, in Needle's message form.

Each adapter converts its framework's messages to Needle's dict form, builds a `Turn` with its
tools (passed to the engine as they are: the engine converts any tool form) and their names,
calls `Turn.run` and renders the `Decision` in its own types. Nothing here imports LangChain or
LlamaIndex.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from needle_core.api import normalize_tool_choice
from needle_core.messages import normalize_messages
from needle_core.types import NeedleResult, ToolCall

NO_TOOLS_TEXT = (
    "Needle only makes tool decisions (which tool, with which arguments) and does not write "
    "free-text replies: give it tools (with calls allowed) to get tool calls, or set a fallback "
    "model to answer turns like this one."
)
NO_CALL_TEXT = "Needle found no tool to call for this request."

_load_lock = threading.Lock()


def load_engine(model_dir: str | None) -> Any:
    """The `needle_core.Needle` engine for ``model_dir``, loaded once per directory and shared."""
    with _load_lock:
        return _load(model_dir)


@functools.cache
def _load(model_dir: str | None) -> Any:
    from needle_core import Needle

    return Needle(model_dir)


def resolve_tool_choice(tool_choice: Any, tool_names: list[str]) -> str:
    """`normalize_tool_choice`, refusing early (ValueError) a name that is not among ``tool_names``."""
    choice = normalize_tool_choice(tool_choice)
    if choice not in ("auto", "required", "none") and choice not in tool_names:
        raise ValueError(f"tool_choice {choice!r} names no bound tool (bound: {', '.join(tool_names) or 'none'})")
    return choice


def count_tokens(messages: list[dict[str, Any]]) -> int:
    """A rough input size: whitespace-separated tokens of every message's text."""
    return sum(len(m["content"].split()) for m in messages)


def tool_results_summary(messages: list[dict[str, Any]]) -> str | None:
    """State the tool results that came after the last user message, one line per result.

    A tool message without a name takes it from the assistant call with the same id. None when
    there are no such results.
    """
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    names = {c["id"]: c["name"] for m in messages if m["role"] == "assistant" for c in m["tool_calls"]}
    lines = [
        f"{m['name'] or names.get(m['tool_call_id']) or 'a tool'} returned: {m['content']}"
        for m in messages[last_user + 1 :]
        if m["role"] == "tool"
    ]
    return "\n".join(lines) or None


@dataclass
class Decision:
    """How one turn is answered: by Needle (calls, or a text when there is none) or by the fallback.

    ``invalid`` holds calls to tools that are not bound, with the reason (the engine validates
    arguments itself and never returns a call whose arguments do not fit).
    """

    answered_by: Literal["needle", "fallback"]
    result: NeedleResult | None
    calls: list[ToolCall] = field(default_factory=list)
    invalid: list[tuple[ToolCall, str]] = field(default_factory=list)
    text: str = ""

    def metadata(self, model_name: str, *, invalid_as_warnings: bool = False) -> dict[str, Any]:
        """Response metadata for a Needle reply.

        ``invalid_as_warnings``: for replies that cannot carry invalid calls, name each one in
        ``warnings`` so that none is dropped silently.
        """
        meta: dict[str, Any] = {
            "model_name": model_name,
            "confidence": self.result.confidence if self.result else None,
            "timings": dict(self.result.timings) if self.result else {},
            "answered_by": self.answered_by,
        }
        warnings = list(self.result.warnings) if self.result else []
        if invalid_as_warnings:
            warnings += [f"dropped invalid call to {c.name!r} ({e})" for c, e in self.invalid]
        if warnings:
            meta["warnings"] = warnings
        return meta


@dataclass
class Turn:
    """One request: messages in Needle's form, the tools, their names, the engine's tool_choice."""

    messages: list[dict[str, Any]]
    tools: list[Any]
    tool_names: list[str]
    tool_choice: str

    @classmethod
    def build(cls, messages: list[dict[str, Any]], tools: list[Any], tool_names: list[str], tool_choice: Any) -> Turn:
        return cls(
            normalize_messages(messages), tools, tool_names, normalize_tool_choice(tool_choice) if tools else "none"
        )

    @property
    def uses_engine(self) -> bool:
        """Whether the engine has a decision to make (tools bound and calls allowed)."""
        return bool(self.tools) and self.tool_choice != "none"

    def run(self, engine: Any, threshold: float, has_fallback: bool) -> Decision:
        """Call ``engine`` when it has a decision to make, then route (see `decide`)."""
        result = engine.call(self.messages, self.tools, tool_choice=self.tool_choice) if self.uses_engine else None
        return self.decide(result, threshold, has_fallback)

    async def arun(self, engine: Any, threshold: float, has_fallback: bool) -> Decision:
        """`run` with the engine's ``acall``."""
        result = (
            await engine.acall(self.messages, self.tools, tool_choice=self.tool_choice) if self.uses_engine else None
        )
        return self.decide(result, threshold, has_fallback)

    def decide(self, result: NeedleResult | None, threshold: float, has_fallback: bool) -> Decision:
        """Route the turn given the engine's result (None when the engine did not run).

        The fallback answers (when there is one) a turn the engine did not run on, a result below
        ``threshold``, and a result without valid calls when no tool results wait to be stated.
        Otherwise Needle answers with its valid calls, or with a text: the tool results after the
        last user message, else a plain notice.
        """
        summary = tool_results_summary(self.messages)
        calls, invalid = [], []
        for call in result.calls if result else []:
            if call.name in self.tool_names:
                calls.append(call)
            else:
                invalid.append((call, f"unknown tool {call.name!r} (bound: {', '.join(self.tool_names)})"))
        needs_fallback = result is None or result.confidence < threshold or (not calls and summary is None)
        if has_fallback and needs_fallback:
            return Decision("fallback", result)
        if calls:
            return Decision("needle", result, calls, invalid)
        if summary is not None:
            text = summary
        elif result is None:
            text = NO_TOOLS_TEXT
        elif invalid:
            text = "Needle could not make a valid tool call: " + "; ".join(e for _, e in invalid)
        else:
            text = NO_CALL_TEXT
        return Decision("needle", result, [], invalid, text)
