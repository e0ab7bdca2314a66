"""`Needle`: the public API. Request + tools in, validated tool calls out.

``Needle()`` loads the model bundled in the package, offline. Every call runs: convert tools to
canonical specs -> render -> encode -> constrained greedy decoding -> arguments checked and
coerced by `validate_call`. A call that would not validate is never returned.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from needle_core.callformat import Renderer
from needle_core.decoding import CallDecoder
from needle_core.errors import NeedleError, ToolCallError
from needle_core.messages import normalize_messages
from needle_core.schema import ToolSpec, to_tool_specs, validate_call
from needle_core.types import NeedleResult, ToolCall

MAX_MESSAGE_CHARS = 20_000  # longer texts are cut before tokenizing (and reported), bounding time
# Tool and parameter descriptions longer than this are cut before tokenizing (and reported): the
# renderer keeps at most 48 tokens of each, and tokenizing megabytes costs seconds per new tool.
MAX_DESCRIPTION_CHARS = 2_000


def bundled_model_dir() -> Path:
    return Path(str(resources.files("needle_core") / "assets" / "model"))


def normalize_tool_choice(tool_choice: Any) -> str:
    """LangChain / OpenAI / LlamaIndex spellings -> "auto" | "required" | "none" | a tool name."""
    if tool_choice is None or tool_choice == "auto":
        return "auto"
    if tool_choice is True or tool_choice in ("required", "any"):
        return "required"
    if tool_choice is False or tool_choice == "none":
        return "none"
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if isinstance(name, str):
            return name
        if tool_choice.get("type") in ("any", "required"):
            return "required"
    if isinstance(tool_choice, str):
        return tool_choice
    raise NeedleError(f"tool_choice {tool_choice!r} is not understood (auto, required/any, none, or a tool name)")


class Needle:
    """A loaded Needle model. Thread-safe: share one instance between threads.

    ``threads``: ONNX Runtime threads for the encoder (default: the CPU count, at most 4); the
    decoder always runs on one (`needle_core.engine`).
    """

    def __init__(self, model_dir: str | Path | None = None, threads: int | None = None, max_calls: int = 8,
                 max_steps: int = 256):
        from needle_core.engine import OnnxEngine

        self.model_dir = Path(model_dir) if model_dir else bundled_model_dir()
        self.engine = OnnxEngine(self.model_dir, threads=threads)
        self.renderer = Renderer()
        self.max_calls, self.max_steps = max_calls, max_steps
        calib = self.engine.meta.get("calibration") or {}
        self._calib = (float(calib.get("a", 1.0)), float(calib.get("b", 0.0)), bool(calib))
        self._embed_cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return f"needle-{self.engine.meta.get('name', self.model_dir.name)}-{self.engine.meta.get('precision', '')}"

    # -- public API --
    def call(self, query_or_messages: Any, tools: Any, tool_choice: Any = "auto") -> NeedleResult:
        """Decide which tools to call, with which arguments, for one request."""
        return self.call_batch([query_or_messages], tools, tool_choice)[0]

    async def acall(self, query_or_messages: Any, tools: Any, tool_choice: Any = "auto") -> NeedleResult:
        """`call` in a worker thread, so an event loop is never blocked."""
        return await asyncio.to_thread(self.call, query_or_messages, tools, tool_choice)

    def call_batch(self, requests: list, tools: Any, tool_choice: Any = "auto") -> list[NeedleResult]:
        """Many requests against one toolset: the tools are converted once, and each request runs
        as if called alone, so every answer and confidence equals `call`'s.

        Not one batch through the graphs, measured: the int8 encoder quantizes each MatMul's input
        with one scale over the whole batch, so the other requests of a batch changed a request's
        states (3 of 16 test requests got other calls, confidences moved by up to 0.36), and
        decoding rows together runs the decoder at the union of their decisions (2-core AMD EPYC,
        8 requests sharing 5 tools: 9.5 ms of decoding per request against 4.1 ms alone;
        `runs/s21/batch_shared2.py`). Calls per second are the same or better one at a time."""
        t0 = time.perf_counter()
        specs = to_tool_specs(tools) if tools else []  # conversions are remembered per tool (schema)
        choice = normalize_tool_choice(tool_choice)
        if choice not in ("auto", "required", "none") and choice not in {s.name for s in specs}:
            raise NeedleError(f"tool_choice names {choice!r}, which is not among the tools: "
                              f"{', '.join(s.name for s in specs) or '(none)'}")
        if not specs or choice == "none":
            why = "no tools were given" if not specs else "tool_choice is 'none'"
            return [NeedleResult(calls=[], confidence=1.0, timings={"total_ms": 0.0}, warnings=[why]) for _ in requests]
        specs, spec_cuts = _clip_descriptions(specs)
        t_conv = time.perf_counter()
        convert_ms = (t_conv - t0) * 1e3 / max(len(requests), 1)
        return [self._answer(req, specs, choice, spec_cuts, convert_ms) for req in requests]

    def _answer(self, request: Any, specs: list[ToolSpec], choice: str, spec_warnings: list[str],
                convert_ms: float) -> NeedleResult:
        """One request against converted tools (``spec_warnings``: what converting them cut):
        render, encode, decode, validate."""
        t_start = time.perf_counter()
        messages, cut = self._clip(normalize_messages(request))
        r = self.renderer.render(messages, specs,
                                 rank_tools=lambda idx: self._rank_tools(messages, specs, idx, choice))
        warn = spec_warnings + cut + r.warnings
        t_render = time.perf_counter()
        encoded = self.engine.encode([r.ids])
        t_enc = time.perf_counter()
        decoder = CallDecoder(r, specs, tool_choice=choice, max_calls=self.max_calls)
        (calls, logp, steps), = self.engine.decode([decoder], encoded, max_steps=self.max_steps)
        t_dec = time.perf_counter()
        checked = []
        for call in calls:
            try:
                args = validate_call(call["name"], call["arguments"], specs)
            except ToolCallError as exc:  # the state machine should make this unreachable
                warn.append(f"dropped a call that failed validation: {exc}")
                continue
            checked.append(ToolCall(name=call["name"], arguments=args))
        if choice == "required" and not checked:
            warn.append("tool_choice requires a call, but no tool's required arguments can be formed from the request")
        timings = {"convert_ms": convert_ms, "render_ms": (t_render - t_start) * 1e3,
                   "encode_ms": (t_enc - t_render) * 1e3, "decode_ms": (t_dec - t_enc) * 1e3,
                   "total_ms": convert_ms + (time.perf_counter() - t_start) * 1e3, "decode_steps": float(steps)}
        return NeedleResult(calls=checked, confidence=self.confidence(logp), logprob=logp, timings=timings,
                            warnings=warn)

    def confidence(self, logp: float) -> float:
        """Probability that the decision is right: Platt-scaled sequence log-probability when the
        model folder carries a calibration, else the raw sequence probability."""
        a, b, calibrated = self._calib
        if not calibrated:
            return float(math.exp(max(logp, -50.0)))
        return float(1.0 / (1.0 + math.exp(-(a * logp + b))))

    # -- helpers --
    @staticmethod
    def _clip(messages: list[dict]) -> tuple[list[dict], list[str]]:
        out, warnings = [], []
        for i, m in enumerate(messages):
            if len(m["content"]) > MAX_MESSAGE_CHARS:
                warnings.append(f"message {i} cut from {len(m['content'])} to {MAX_MESSAGE_CHARS} characters")
                m = {**m, "content": m["content"][:MAX_MESSAGE_CHARS]}
            out.append(m)
        return out, warnings

    def _rank_tools(self, messages: list[dict], specs: list[ToolSpec], indices: list[int],
                    choice: str = "auto") -> list[int]:
        """Rank tools by cosine similarity of the model's own embeddings (tool texts cached).

        A tool named by ``tool_choice`` always ranks first, so it is never the one left out."""
        tok = self.renderer.tok
        query = " ".join(m["content"] for m in messages if m["role"] in ("user", "system"))[-2000:]
        keys = [specs[i].key for i in indices]
        missing = [(k, specs[i]) for k, i in dict(zip(keys, indices)).items() if k not in self._embed_cache]
        if missing:  # `embed` runs one text at a time, so batching here would change nothing
            texts = [f"{spec.name} : {spec.description}"[:1000] for _, spec in missing]
            ids = [[101] + e.ids[:126] + [102] for e in tok.encode_batch(texts, add_special_tokens=False)]
            vecs = self.engine.embed(ids)
            with self._lock:
                self._embed_cache.update(zip([k for k, _ in missing], vecs))
        q = tok.encode(query, add_special_tokens=False).ids[:254]
        qv = self.engine.embed([[101] + q + [102]])[0]
        scores = [float(self._embed_cache[k] @ qv) for k in keys]
        ranked = [indices[j] for j in np.argsort(scores)[::-1]]
        return sorted(ranked, key=lambda i: specs[i].name != choice)  # stable: the named tool first


def _clip_descriptions(specs: list[ToolSpec]) -> tuple[list[ToolSpec], list[str]]:
    """Specs with every description over `MAX_DESCRIPTION_CHARS` cut, and a warning per cut."""
    warnings: list[str] = []

    def clip(text: str, what: str) -> str:
        warnings.append(f"{what} cut from {len(text)} to {MAX_DESCRIPTION_CHARS} characters")
        return text[:MAX_DESCRIPTION_CHARS]

    def walk(node: Any, tool: str, path: str) -> Any:
        if isinstance(node, list):
            return [walk(x, tool, f"{path}[{i}]") for i, x in enumerate(node)]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str) and len(value) > MAX_DESCRIPTION_CHARS:
                out[key] = clip(value, f"tool {tool!r}: description at parameters{path}")
            elif isinstance(value, (dict, list)) and key not in ("default", "const", "enum", "examples"):
                out[key] = walk(value, tool, f"{path}.{key}")
            else:
                out[key] = value
        return out

    out = []
    for spec in specs:
        if len(spec.description) <= MAX_DESCRIPTION_CHARS and len(json.dumps(spec.parameters)) <= MAX_DESCRIPTION_CHARS:
            out.append(spec)  # nothing long enough to cut: keep the spec as it is
            continue
        desc = spec.description
        if len(desc) > MAX_DESCRIPTION_CHARS:
            desc = clip(desc, f"tool {spec.name!r}: description")
        out.append(dataclasses.replace(spec, description=desc, parameters=walk(spec.parameters, spec.name, "")))
    return out, warnings
