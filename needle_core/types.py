"""Public result types of `Needle.call`."""
from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field


def new_call_id() -> str:
    """An id in the style agent frameworks expect (``call_`` + 24 hex digits)."""
    return "call_" + uuid.uuid4().hex[:24]


class ToolCall(BaseModel):
    """One tool call: a declared tool name and arguments that validate against its schema."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    id: str = Field(default_factory=new_call_id)


class NeedleResult(BaseModel):
    """What `Needle.call` returns.

    ``calls`` is empty when the model decides that no tool fits. ``confidence`` in [0, 1] is the
    model's calibrated probability that the whole decision is right, so callers can escalate
    below a threshold. ``timings`` holds milliseconds per stage. ``warnings`` reports anything
    that was cut or dropped to fit the model (never silent).
    """

    calls: list[ToolCall] = Field(default_factory=list)
    confidence: float = 1.0
    logprob: float = 0.0  # log-probability of the decoded actions, what `confidence` is calibrated from
    timings: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
