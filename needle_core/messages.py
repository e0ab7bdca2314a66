"""The conversation form every part of Needle speaks.

A request is a plain string (one user turn) or a list of message dicts in OpenAI's shape:

- ``{"role": "user", "content": "..."}`` (``system`` too; it is rendered like user text),
- ``{"role": "assistant", "content": "...", "tool_calls": [{"id", "name", "arguments"}]}``,
- ``{"role": "tool", "content": "...", "tool_call_id": "...", "name": "..."}``.

Adapters (LangChain, LlamaIndex) convert their own message types into this form; the renderer
reads only this form.
"""
from __future__ import annotations

import json
from typing import Any

from needle_core.errors import NeedleError

ROLES = ("system", "user", "assistant", "tool")


def normalize_messages(query_or_messages: Any) -> list[dict[str, Any]]:
    """Return a list of clean message dicts; raise `NeedleError` naming the bad message."""
    if isinstance(query_or_messages, str):
        return [{"role": "user", "content": query_or_messages}]
    if not isinstance(query_or_messages, (list, tuple)):
        raise NeedleError(f"request must be a string or a list of messages, got {type(query_or_messages).__name__}")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(query_or_messages):
        if not isinstance(msg, dict):
            raise NeedleError(f"message {i}: expected a dict with 'role' and 'content', got {type(msg).__name__}")
        role = msg.get("role")
        if role not in ROLES:
            raise NeedleError(f"message {i}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        content = msg.get("content") or ""
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False) if not isinstance(content, list) else _join_parts(content)
        clean: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant":
            calls = []
            for j, call in enumerate(msg.get("tool_calls") or []):
                fn = call.get("function", call) if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise NeedleError(f"message {i}: tool_calls[{j}] needs a 'name'")
                args = fn.get("arguments", fn.get("args", {}))
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError as exc:
                        raise NeedleError(f"message {i}: tool_calls[{j}] arguments are not JSON: {exc}") from None
                calls.append({"id": call.get("id", ""), "name": fn["name"], "arguments": args})
            clean["tool_calls"] = calls
        if role == "tool":
            clean["tool_call_id"] = msg.get("tool_call_id", "")
            clean["name"] = msg.get("name", "")
        out.append(clean)
    if not out:
        raise NeedleError("request has no messages")
    return out


def _join_parts(parts: list) -> str:
    """Content given as a list of parts (OpenAI / LangChain style): keep the text parts."""
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("text", "")))
    return "\n".join(texts)
