"""Canonical training examples: their shape, validation, JSONL files and a `datasets` view.

One example is one assistant decision, stored as one JSON object per line::

    {"messages": [...],            # the conversation so far (needle_core.messages form)
     "tools":    [...],            # canonical tool specs (ToolSpec.to_dict())
     "calls":    [{"name", "arguments"}],   # the next assistant turn; [] = answer without a call
     "source": "seal_tools", "teacher": "gpt-3.5-turbo", "id": "seal_tools/dev/17"}

Every importer, the augmenter and the teachers write this form, and every reader checks it with
`validate_example`, so a bad row is caught where it is made instead of deep inside training.
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from needle_core.errors import NeedleError

# ---- the shape ------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Call(_Strict):
    name: str = Field(min_length=1)
    arguments: dict[str, Any]


class MessageCall(Call):
    id: str = ""


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: list[MessageCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class Tool(_Strict):
    name: str = Field(min_length=1)
    description: str
    parameters: dict[str, Any]


class Example(_Strict):
    """The structural part of the contract; `validate_example` adds the checks that need the tools."""

    messages: list[Message] = Field(min_length=1)
    tools: list[Tool]
    calls: list[Call]
    source: str = Field(min_length=1)
    teacher: str
    id: str = Field(min_length=1)


JSON_FIELDS = ("messages", "tools", "calls")


# ---- validation -----------------------------------------------------------------------------

def example_specs(example: dict[str, Any]) -> list:
    """The example's tools as `ToolSpec`s (raises `ToolSchemaError` on a bad tool)."""
    from needle_core.schema import to_tool_spec

    return [to_tool_spec(tool) for tool in example["tools"]]


def validate_example(example: Any) -> list[str]:
    """Everything wrong with one example, as readable problems; [] means it is fit to train on.

    Checks the shape, that the conversation ends where an assistant turn is due, that tool
    results answer earlier calls, that the tools are canonical (converting them again changes
    nothing) with unique names, and that every call passes `validate_call` unchanged (so the
    stored arguments are already the coerced ones).
    """
    from needle_core.errors import ToolCallError, ToolSchemaError
    from needle_core.schema import to_tool_spec, validate_call

    if not isinstance(example, dict):
        return [f"example must be a JSON object, got {type(example).__name__}"]
    try:
        Example.model_validate(example)
    except ValidationError as exc:
        return [f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()]

    problems: list[str] = []
    messages = example["messages"]
    if messages[-1]["role"] == "assistant":
        problems.append("messages: the last message is an assistant turn, so no decision is due")
    call_ids: set[str] = set()
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            call_ids.update(c.get("id", "") for c in msg.get("tool_calls") or [] if c.get("id"))
        if msg["role"] == "tool" and msg.get("tool_call_id") and msg["tool_call_id"] not in call_ids:
            problems.append(f"messages[{i}]: tool result answers unknown call id {msg['tool_call_id']!r}")

    specs = []
    for i, tool in enumerate(example["tools"]):
        try:
            spec = to_tool_spec(tool)
        except ToolSchemaError as exc:
            problems.append(f"tools[{i}]: {exc}")
            continue
        if spec.to_dict() != tool:
            problems.append(f"tools[{i}] ({tool['name']!r}): not canonical (to_tool_spec changes it)")
        specs.append(spec)
    names = [t["name"] for t in example["tools"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"tools: duplicate names {dupes}")

    for i, call in enumerate(example["calls"]):
        try:
            coerced = validate_call(call["name"], call["arguments"], specs)
        except ToolCallError as exc:
            problems.append(f"calls[{i}]: {exc}")
            continue
        if coerced != call["arguments"]:
            problems.append(f"calls[{i}] ({call['name']!r}): arguments are not in coerced form")
    return problems


def check_example(example: dict[str, Any]) -> dict[str, Any]:
    """Return the example unchanged, or raise `NeedleError` listing its problems."""
    problems = validate_example(example)
    if problems:
        raise NeedleError(f"example {example.get('id', '?')!r} is invalid: " + "; ".join(problems))
    return example


# ---- held-out splits --------------------------------------------------------------------------

def request_text(example: dict[str, Any]) -> str:
    """The user's words of an example (all user turns), the identity of a request across sources."""
    messages = example["messages"]
    messages = json.loads(messages) if isinstance(messages, str) else messages
    return "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user").strip().lower()


def split_by_request(examples: Iterable[dict[str, Any]], fraction: float, salt: str = "") -> tuple[list, list]:
    """(rest, held out): a fixed share of requests chosen by a hash of the user's words.

    Splitting by request, not by example, keeps every copy of a request (the same words in two
    sources, or augmented variants made later) on one side, so held-out figures are not inflated
    by near-copies of training rows. ``salt`` gives independent splits for different purposes."""
    rest, held = [], []
    for ex in examples:
        bucket = zlib.crc32(f"{salt}\x00{request_text(ex)}".encode()) % 10_000
        (held if bucket < fraction * 10_000 else rest).append(ex)
    return rest, held


# ---- JSONL ----------------------------------------------------------------------------------

def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; a line that is not a JSON object raises an error naming the line."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise NeedleError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise NeedleError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield row


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows (creating the folder); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


# ---- Hugging Face datasets ------------------------------------------------------------------

def to_dataset(examples: Iterable[dict[str, Any]]):
    """Examples -> `datasets.Dataset`.

    Tool schemas differ from row to row, which Arrow cannot give one column type, so
    ``messages``, ``tools`` and ``calls`` are stored as JSON strings; `decode_row` undoes that.
    ``n_calls`` is kept as a plain column for quick filtering.
    """
    from datasets import Dataset

    rows = []
    for ex in examples:
        row = {k: ex[k] for k in ("id", "source", "teacher")}
        row.update({k: json.dumps(ex[k], ensure_ascii=False) for k in JSON_FIELDS})
        row["n_calls"] = len(ex["calls"])
        rows.append(row)
    if not rows:
        return Dataset.from_dict({k: [] for k in ("id", "source", "teacher", *JSON_FIELDS, "n_calls")})
    return Dataset.from_list(rows)


def load_examples(paths: str | Path | Iterable[str | Path]):
    """Read canonical JSONL file(s) into one `datasets.Dataset` (see `to_dataset`)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return to_dataset(ex for p in paths for ex in iter_jsonl(p))


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A Dataset row back to a canonical example (JSON-string columns parsed)."""
    out = {k: row[k] for k in ("id", "source", "teacher")}
    for k in JSON_FIELDS:
        value = row[k]
        out[k] = json.loads(value) if isinstance(value, str) else value
    return out
