"""``needle eval bfcl``: score a tool-calling model with the official BFCL v4 AST checker, offline.

What it does
------------
For each single-turn BFCL v4 category (``CATEGORIES``) it reads the requests that ship inside the
PyPI package ``bfcl-eval`` (``bfcl_eval/data/BFCL_v4_<category>.json``, JSON lines, answers in
``bfcl_eval/data/possible_answer/``), asks a *predictor* for the calls, and scores them exactly as
the official evaluation runner does for function-calling models:

* AST categories (simple, multiple, parallel, live_*): the calls are turned into the checker's
  decoded form ``[{name: {arg: value}}]``, checked for that form, then passed to
  ``bfcl_eval.eval_checker.ast_eval.ast_checker.ast_checker(..., Language.PYTHON, category, ...)``.
  No call at all (``[]``) is a wrong answer there (``simple_function_checker:wrong_count`` and
  the like, from the checker itself).
* Irrelevance categories (``irrelevance``, ``live_irrelevance``): correct exactly when the
  decoded output is empty in the sense of ``bfcl_eval.utils.is_empty_output`` (``[]`` or
  ``[{}]``), as in the official ``_evaluate_single_relevance_entry``.

One deliberate difference from the official runner: an exception inside the predictor is a
wrong answer in *every* category (error type ``needle:predict_error``). Upstream, a crashed
inference leaves an error string that fails to decode and would count as "no call", i.e. as
correct on irrelevance; a crashing model should not earn points.

The predictor contract
----------------------
``predict(messages, tools) -> calls`` where ``messages`` are OpenAI-shaped dicts
(``{"role", "content"}``; BFCL turns are flattened in order, system messages included), ``tools``
are deep copies of the raw BFCL function dicts (Gorilla types ``dict``/``float``/``tuple``/``any``,
names may contain dots, no language hint appended to descriptions), and ``calls`` is
``[{"name": str, "arguments": dict}]`` (``[]`` = no call). `needle_predictor` wraps the public
engine API (``needle_core.Needle``) in this contract.

Outputs (in ``out_dir``)
------------------------
``bfcl_results.json`` (per category totals/accuracy/latency/error counts, wall time, mean latency),
``bfcl_details.jsonl`` (one record per request), ``bfcl_report.md`` (Needle beside the
leaderboard anchors of FIELD-NOTES section 2) and ``bfcl_accuracy.png`` (bar chart).

Install (offline-friendly, no vendor SDKs)::

    pip install --no-deps bfcl-eval && pip install tree_sitter==0.21.3 tree-sitter-java==0.21.0 \
        tree-sitter-javascript==0.21.4 filelock tenacity overrides
"""
from __future__ import annotations

import argparse
import atexit
import collections
import copy
import functools
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# ---- constants -----------------------------------------------------------------------------------
CATEGORIES: tuple[str, ...] = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
)
IRRELEVANCE_CATEGORIES = frozenset({"irrelevance", "live_irrelevance"})
VERSION_PREFIX = "BFCL_v4"
# The name the checker sees for our model. It only looks the name up for `underscore_to_dot`,
# which the stand-in config answers with False: tool names keep their dots (``math.factorial``).
CHECKER_MODEL_NAME = "needle"
DEFAULT_OUT_DIR = "runs/eval/bfcl"

BFCL_INSTALL_COMMAND = (
    "pip install --no-deps bfcl-eval && pip install tree_sitter==0.21.3 tree-sitter-java==0.21.0 "
    "tree-sitter-javascript==0.21.4 filelock tenacity overrides"
)

# BFCL v4 public leaderboard, April 2026, accuracy % (../shared/docs/FIELD-NOTES.md section 2).
# Categories without a published number are simply absent.
ANCHOR_SOURCE = "BFCL v4 public leaderboard, April 2026 (FIELD-NOTES section 2)"
ANCHORS: dict[str, dict[str, Any]] = {
    "Qwen3-0.6B (FC)": {
        "params": "0.6B",
        "scores": {"simple_python": 86.5, "multiple": 86.0, "parallel": 67.5, "parallel_multiple": 69.5,
                   "live_simple": 61.2, "live_multiple": 56.1, "irrelevance": 80.8},
    },
    "Hammer2.1-0.5b (FC)": {
        "params": "0.5B",
        "scores": {"simple_python": 83.3, "multiple": 81.0, "parallel": 69.0, "parallel_multiple": 51.5,
                   "live_simple": 56.6, "live_multiple": 54.4, "irrelevance": 80.8},
    },
    "Granite-4.0-350m (FC)": {
        "params": "350M",
        "scores": {"simple_python": 83.0, "multiple": 84.5, "parallel": 70.0, "parallel_multiple": 55.5,
                   "live_simple": 61.2, "live_multiple": 42.4, "irrelevance": 60.8},
    },
    "FunctionGemma (self-reported, own prompt)": {
        "params": "270M",
        "scores": {"simple_python": 61.6, "multiple": 63.5, "parallel": 39.0, "parallel_multiple": 29.5,
                   "live_simple": 36.2, "live_multiple": 25.7, "irrelevance": 73.7},
        "note": "simple_python is its python+java+javascript simple score",
    },
    "Llama-3.2-1B-Instruct (FC)": {
        "params": "1B",
        "scores": {"simple_python": 44.0, "multiple": 50.5, "parallel": 44.0, "parallel_multiple": 15.0,
                   "live_simple": 31.8, "live_multiple": 7.3, "irrelevance": 51.6},
    },
}

# (messages, tools) -> calls, or {"calls": calls, "confidence": p} to have calibration reported too
Predictor = Callable[[list[dict], list[dict]], Any]


# ---- the official checker, imported offline --------------------------------------------------------
@dataclass(frozen=True)
class BFCLChecker:
    """The pieces of ``bfcl-eval`` this module uses (see `load_ast_checker`)."""

    ast_checker: Callable[..., dict]
    language: Any  # bfcl_eval.constants.enums.Language.PYTHON
    is_empty_output: Callable[[Any], bool]
    is_function_calling_format_output: Callable[[Any], bool]
    data_dir: Path
    version: str


def _stand_in_model_config() -> types.ModuleType:
    """A module that answers what the AST checker asks of ``bfcl_eval.constants.model_config``."""
    module = types.ModuleType(
        "bfcl_eval.constants.model_config",
        "Stand-in installed by training.evaluate.load_ast_checker: only MODEL_CONFIG_MAPPING, whose "
        "every entry has underscore_to_dot=False. The real module imports every vendor SDK.",
    )
    module.MODEL_CONFIG_MAPPING = collections.defaultdict(lambda: types.SimpleNamespace(underscore_to_dot=False))
    module.__needle_stand_in__ = True
    return module


@functools.lru_cache(maxsize=1)
def load_ast_checker() -> BFCLChecker:
    """Import the official BFCL AST checker without the vendor SDKs it would otherwise pull in.

    Why a stand-in: ``ast_checker.py`` does ``from bfcl_eval.constants.model_config import
    MODEL_CONFIG_MAPPING``, and the real ``model_config`` imports the model handlers of every
    vendor (openai, anthropic, google, mistral, cohere, boto3, …). The checker reads exactly one
    thing from that mapping: ``MODEL_CONFIG_MAPPING[model_name].underscore_to_dot`` (whether the
    model rewrote ``.`` in tool names to ``_``). Needle keeps tool names verbatim, so a
    ``defaultdict`` whose every item says ``underscore_to_dot=False`` is an exact replacement.

    Steps (order matters):

    1. ``BFCL_PROJECT_ROOT`` is set to a fresh temp dir (removed at exit) unless the caller set
       it: ``bfcl_eval.constants.eval_config`` creates ``result/``, ``score/`` and
       ``.file_locks/`` there at import time, and would otherwise write into site-packages.
    2. The stand-in module goes into ``sys.modules["bfcl_eval.constants.model_config"]`` *before*
       the checker is imported, so Python never loads the real one. If the real module was
       already imported (the full SDK install), it is kept and our model name is added to its
       mapping instead.
    3. The checker, ``Language`` and the output-shape helpers of ``bfcl_eval.utils`` are imported.

    Needs ``pip install --no-deps bfcl-eval`` plus ``tree_sitter==0.21.3 tree-sitter-java==0.21.0
    tree-sitter-javascript==0.21.4 filelock tenacity overrides`` (`BFCL_INSTALL_COMMAND`).
    Raises ImportError with that command when bfcl-eval is missing. The result is cached.
    """
    try:
        found = importlib.util.find_spec("bfcl_eval") is not None
    except (ImportError, ValueError, AttributeError):  # e.g. blocked via sys.modules["bfcl_eval"] = None
        found = False
    if not found:
        raise ImportError(f"the BFCL checker needs the 'bfcl-eval' package: {BFCL_INSTALL_COMMAND}")

    if not os.environ.get("BFCL_PROJECT_ROOT"):
        root = tempfile.mkdtemp(prefix="needle-bfcl-")
        atexit.register(shutil.rmtree, root, True)
        os.environ["BFCL_PROJECT_ROOT"] = root

    config_name = "bfcl_eval.constants.model_config"
    if config_name not in sys.modules:
        sys.modules[config_name] = _stand_in_model_config()

    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval import ast_checker as checker_module
    from bfcl_eval.utils import is_empty_output, is_function_calling_format_output

    mapping = checker_module.MODEL_CONFIG_MAPPING
    if not isinstance(mapping, collections.defaultdict) and CHECKER_MODEL_NAME not in mapping:
        mapping[CHECKER_MODEL_NAME] = types.SimpleNamespace(underscore_to_dot=False)

    try:
        from importlib.metadata import version

        pkg_version = version("bfcl-eval")
    except Exception:  # an unusual install (e.g. a source checkout on sys.path)
        pkg_version = "unknown"
    data_dir = Path(checker_module.__file__).resolve().parents[2] / "data"
    return BFCLChecker(
        ast_checker=checker_module.ast_checker,
        language=Language.PYTHON,
        is_empty_output=is_empty_output,
        is_function_calling_format_output=is_function_calling_format_output,
        data_dir=data_dir,
        version=pkg_version,
    )


# ---- data ------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_category(category: str, limit: int | None = None) -> list[dict]:
    """The entries of one category, each with ``possible_answer`` (None for irrelevance).

    Entries keep BFCL's fields: ``id``, ``question`` (a list of turns, each a list of messages)
    and ``function`` (the raw function dicts). Answers are aligned by position, as the official
    runner does. ``limit`` keeps the first N entries.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown or unsupported BFCL category {category!r}; choose from {', '.join(CATEGORIES)}")
    data_dir = load_ast_checker().data_dir
    entries = _read_jsonl(data_dir / f"{VERSION_PREFIX}_{category}.json")
    if category in IRRELEVANCE_CATEGORIES:
        answers: list[Any] = [None] * len(entries)
    else:
        answers = [a["ground_truth"] for a in _read_jsonl(data_dir / "possible_answer" / f"{VERSION_PREFIX}_{category}.json")]
        if len(answers) != len(entries):
            raise ValueError(f"{category}: {len(entries)} requests but {len(answers)} answers")
    out = []
    for entry, answer in zip(entries, answers):
        out.append({**entry, "possible_answer": answer})
    return out[:limit] if limit is not None else out


def bfcl_messages(question: list) -> list[dict]:
    """BFCL's ``question`` (turns of messages) as one flat list of ``{"role", "content"}`` dicts."""
    messages = []
    for turn in question:
        for msg in turn if isinstance(turn, list) else [turn]:
            messages.append({"role": msg["role"], "content": msg.get("content") or ""})
    return messages


# ---- predictions -----------------------------------------------------------------------------------
def to_decoded(calls: Any) -> tuple[list[dict], list[dict]]:
    """Predictor output -> (``[{"name", "arguments"}]`` for the record, ``[{name: args}]`` for the checker).

    Accepts dicts with ``name``/``arguments`` (``args`` too) or objects with those attributes
    (e.g. `needle_core.ToolCall`); arguments may be a JSON string. ``None`` means no call.
    Raises TypeError/ValueError on anything else (scored as a wrong answer).
    """
    if calls is None:
        return [], []
    if not isinstance(calls, (list, tuple)):
        raise TypeError(f"predict must return a list of calls, got {type(calls).__name__}")
    record, decoded = [], []
    for i, call in enumerate(calls):
        if isinstance(call, dict):
            name = call.get("name")
            args = call.get("arguments", call.get("args", {}))
        else:
            name = getattr(call, "name", None)
            args = getattr(call, "arguments", None)
        if isinstance(args, str):
            args = json.loads(args) if args.strip() else {}
        if args is None:
            args = {}
        if not isinstance(name, str) or not name:
            raise TypeError(f"call {i}: 'name' must be a non-empty string, got {name!r}")
        if not isinstance(args, dict):
            raise TypeError(f"call {i} ({name}): 'arguments' must be a dict, got {type(args).__name__}")
        record.append({"name": name, "arguments": args})
        decoded.append({name: args})
    return record, decoded


def score(checker: BFCLChecker, category: str, entry: dict, decoded: list[dict]) -> tuple[bool, str | None, list[str]]:
    """(valid, error type, error messages) for one decoded prediction, as the official runner scores it."""
    if category in IRRELEVANCE_CATEGORIES:
        if checker.is_empty_output(decoded):
            return True, None, []
        return False, "irrelevance_error:decoder_success", ["Valid syntax. Successfully decode AST when it should not."]
    if not checker.is_function_calling_format_output(decoded):
        return False, "ast_decoder:decoder_wrong_output_format", ["Did not output in the specified format."]
    try:
        result = checker.ast_checker(entry["function"], decoded, entry["possible_answer"], checker.language,
                                     category, CHECKER_MODEL_NAME)
    except Exception as exc:  # the checker assumes well-typed output; never let it stop the run
        return False, "checker:exception", [f"{type(exc).__name__}: {exc}"]
    if result.get("valid"):
        return True, None, []
    errors = result.get("error", [])
    return False, result.get("error_type", "unknown"), errors if isinstance(errors, list) else [str(errors)]


# ---- the default predictor -------------------------------------------------------------------------
_GORILLA_TO_JSON_SCHEMA = {
    "dict": "object", "object": "object", "float": "number", "number": "number", "double": "number",
    "integer": "integer", "int": "integer", "long": "integer", "string": "string", "str": "string",
    "boolean": "boolean", "bool": "boolean", "array": "array", "list": "array", "tuple": "array",
    "any": "string",  # as BFCL's own GORILLA_TO_OPENAPI; the checker also maps "any" to str
}


def bfcl_schema(node: Any) -> Any:
    """A BFCL parameter schema with Gorilla type names mapped to JSON Schema (recursively).

    ``dict`` -> object, ``float`` -> number, ``tuple`` -> array, ``any`` -> string, as BFCL does
    before it sends tools to a function-calling model. Other keys are kept.
    """
    if isinstance(node, list):
        return [bfcl_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, str):
            out[key] = _GORILLA_TO_JSON_SCHEMA.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: bfcl_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
            out[key] = bfcl_schema(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def bfcl_tool(function: dict) -> dict:
    """One raw BFCL function dict as an OpenAI tool (name kept verbatim, dots included)."""
    fn = {"name": function["name"], "description": function.get("description", ""),
          "parameters": bfcl_schema(function.get("parameters", {"type": "dict", "properties": {}}))}
    return {"type": "function", "function": fn}


def needle_predictor(model_dir: str | os.PathLike | None = None, *, convert_types: bool = True) -> Predictor:
    """A predictor over the public engine API: ``Needle(model_dir).call(messages, tools).calls``.

    ``model_dir=None`` loads the bundled model. With ``convert_types`` the raw BFCL functions are
    passed as OpenAI tools with JSON Schema types (`bfcl_tool`), as BFCL does for FC models.
    A request with no tools at all (4 in live_irrelevance) is answered with no call. Each answer
    carries the engine's ``confidence`` so the run also reports calibration on BFCL.
    """
    from needle_core import Needle

    model = Needle(model_dir) if model_dir is not None else Needle()

    def predict(messages: list[dict], tools: list[dict]) -> dict:
        if not tools:
            return {"calls": [], "confidence": None}
        specs = [bfcl_tool(t) for t in tools] if convert_types else tools
        result = model.call(messages, specs)
        return {"calls": [{"name": c.name, "arguments": dict(c.arguments)} for c in result.calls],
                "confidence": result.confidence}

    return predict


# ---- the run -----------------------------------------------------------------------------------------
def _parse_categories(categories: Any) -> list[str]:
    if categories is None:
        return list(CATEGORIES)
    if isinstance(categories, str):
        categories = [c for c in categories.split(",")]
    cats = [c.strip() for c in categories if c and c.strip()]
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown BFCL categories {unknown}; choose from {', '.join(CATEGORIES)}")
    if not cats:
        raise ValueError("no categories given")
    return list(dict.fromkeys(cats))


def evaluate_bfcl(
    predict: Predictor,
    categories: Any = None,
    limit: int | None = None,
    out_dir: str | os.PathLike = DEFAULT_OUT_DIR,
    *,
    model_label: str = "Needle",
    progress: bool = True,
) -> dict:
    """Run ``predict`` over BFCL v4 categories, score with the official checker, write the reports.

    ``categories``: names or a comma-separated string (default: all of `CATEGORIES`); ``limit``:
    the first N requests per category. Exceptions in ``predict`` and malformed outputs are wrong
    answers with their error text in the details; they never stop the run. Returns the dict that
    is written to ``bfcl_results.json`` (accuracies as fractions in [0, 1]) plus ``files``.
    """
    from tqdm.auto import tqdm

    checker = load_ast_checker()
    cats = _parse_categories(categories)
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    details_path = out / "bfcl_details.jsonl"

    per_category: dict[str, dict] = {}
    latencies: list[float] = []
    judged: list[tuple[float, bool]] = []  # (confidence, right?) for calibration
    t_start = time.perf_counter()
    with open(details_path, "w", encoding="utf-8") as details:
        for category in cats:
            entries = load_category(category, limit)
            correct = 0
            cat_latency: list[float] = []
            error_counts: collections.Counter = collections.Counter()
            for entry in tqdm(entries, desc=category, unit="req", disable=not progress, leave=True):
                messages = bfcl_messages(entry["question"])
                tools = copy.deepcopy(entry["function"])
                record: dict[str, Any] = {"category": category, "id": entry["id"]}
                t0 = time.perf_counter()
                try:
                    raw = predict(messages, tools)
                except Exception as exc:
                    raw, predict_error = None, f"{type(exc).__name__}: {exc}"
                else:
                    predict_error = None
                latency_ms = (time.perf_counter() - t0) * 1000.0
                cat_latency.append(latency_ms)

                if predict_error is not None:
                    valid, error_type, errors = False, "needle:predict_error", [predict_error]
                    record["prediction"] = None
                else:
                    if isinstance(raw, dict) and "calls" in raw:
                        record["confidence"] = raw.get("confidence")
                        raw = raw["calls"]
                    try:
                        record["prediction"], decoded = to_decoded(raw)
                    except (TypeError, ValueError) as exc:
                        valid, error_type, errors = False, "needle:bad_prediction", [f"{type(exc).__name__}: {exc}"]
                        record["prediction"] = repr(raw)
                    else:
                        valid, error_type, errors = score(checker, category, entry, decoded)
                correct += valid
                if record.get("confidence") is not None:
                    judged.append((record["confidence"], valid))
                if not valid:
                    error_counts[error_type] += 1
                record.update(valid=valid, error_type=error_type, error=errors, latency_ms=round(latency_ms, 3))
                details.write(json.dumps(record, ensure_ascii=False, default=repr) + "\n")
            total = len(entries)
            per_category[category] = {
                "total": total,
                "correct": correct,
                "accuracy": correct / total if total else 0.0,
                "mean_latency_ms": sum(cat_latency) / len(cat_latency) if cat_latency else 0.0,
                "errors": dict(error_counts.most_common()),
            }
            latencies.extend(cat_latency)
    wall = time.perf_counter() - t_start

    total = sum(c["total"] for c in per_category.values())
    correct = sum(c["correct"] for c in per_category.values())
    results = {
        "benchmark": "BFCL v4, single-turn AST categories (official bfcl-eval checker)",
        "bfcl_eval_version": checker.version,
        "model": model_label,
        "limit": limit,
        "categories": per_category,
        "summary": {
            "total": total,
            "correct": correct,
            "micro_accuracy": correct / total if total else 0.0,
            # Unweighted mean over the categories run; NOT BFCL's "Overall" (which weights
            # multi-turn and agentic work).
            "mean_category_accuracy": (sum(c["accuracy"] for c in per_category.values()) / len(per_category)
                                       if per_category else 0.0),
        },
        "requests": len(latencies),
        "wall_time_s": wall,
        "mean_latency_ms": sum(latencies) / len(latencies) if latencies else 0.0,
        "anchors_source": ANCHOR_SOURCE,
        "calibration": calibration_summary(judged),
    }
    files = {"results": str(out / "bfcl_results.json"), "details": str(details_path),
             "report": str(out / "bfcl_report.md"), "chart": str(out / "bfcl_accuracy.png")}
    (out / "bfcl_report.md").write_text(render_report(results), encoding="utf-8")
    try:
        plot_accuracy(results, out / "bfcl_accuracy.png")
    except ImportError as exc:  # matplotlib is in the eval/train extras, not the plain install
        print(f"needle eval: chart skipped, matplotlib is not installed ({exc})", file=sys.stderr)
        files.pop("chart")
    results["files"] = files
    with open(out / "bfcl_results.json", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return results


def calibration_summary(judged: list[tuple[float, bool]]) -> dict | None:
    """How well ``confidence`` predicts the checker's verdict on BFCL (never fitted here: BFCL is
    held out, so this is the out-of-distribution view of the calibration fitted on training sources)."""
    if not judged:
        return None
    import numpy as np

    from training.calibrate import expected_calibration_error

    conf = np.array([c for c, _ in judged], dtype=float)
    right = np.array([v for _, v in judged], dtype=float)
    return {"requests": len(judged), "mean_confidence": float(conf.mean()), "accuracy": float(right.mean()),
            "ece": expected_calibration_error(conf, right)}


# ---- reports -------------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def accuracy_table(results: dict) -> str:
    """Markdown table: Needle and the anchors (rows) by category (columns), accuracy %."""
    cats = list(results["categories"])
    lines = ["| model | params | " + " | ".join(cats) + " |", "|---|---|" + "---|" * len(cats)]
    needle = [_pct(100.0 * results["categories"][c]["accuracy"]) for c in cats]
    lines.append(f"| **{results['model']}** (this run) | — | " + " | ".join(f"**{v}**" for v in needle) + " |")
    for name, anchor in ANCHORS.items():
        row = [_pct(anchor["scores"].get(c)) for c in cats]
        lines.append(f"| {name} | {anchor['params']} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_report(results: dict) -> str:
    cats = results["categories"]
    limit = results.get("limit")
    summary = results["summary"]
    parts = [
        f"# BFCL v4 results: {results['model']}",
        "",
        f"Official AST checker from `bfcl-eval` {results['bfcl_eval_version']} (Python), single-turn categories. "
        f"{results['requests']} requests in {results['wall_time_s']:.1f} s; "
        f"mean latency {results['mean_latency_ms']:.2f} ms per request.",
    ]
    if limit is not None:
        parts.append("")
        parts.append(f"**Partial run: only the first {limit} requests per category.** The anchors are full-set "
                     "numbers, so compare with care.")
    parts += [
        "",
        "## Accuracy (%) beside the anchors",
        "",
        accuracy_table(results),
        "",
        f"Anchors: {ANCHOR_SOURCE}. — = no published number for that category.",
    ]
    for name, anchor in ANCHORS.items():
        if anchor.get("note"):
            parts.append(f"{name}: {anchor['note']}.")
    parts += [
        f"Across the categories run: {summary['correct']}/{summary['total']} requests right "
        f"({100 * summary['micro_accuracy']:.1f}%), unweighted mean of category accuracies "
        f"{100 * summary['mean_category_accuracy']:.1f}% (not BFCL's Overall, which weights multi-turn "
        "and agentic work).",
        "",
        "## Per category",
        "",
        "| category | correct | total | accuracy % | mean latency ms | most frequent errors |",
        "|---|---|---|---|---|---|",
    ]
    for cat, r in cats.items():
        errs = ", ".join(f"{k} ({v})" for k, v in list(r["errors"].items())[:3]) or "—"
        parts.append(f"| {cat} | {r['correct']} | {r['total']} | {100 * r['accuracy']:.1f} | "
                     f"{r['mean_latency_ms']:.2f} | {errs} |")
    cal = results.get("calibration")
    if cal:
        parts += ["", f"Confidence on these requests (the model's calibration was fitted on training sources, "
                      f"never on BFCL): mean {cal['mean_confidence']:.3f} vs accuracy {cal['accuracy']:.3f}, "
                      f"expected calibration error {cal['ece']:.3f} over {cal['requests']} requests."]
    parts += ["", "Per-request records: `bfcl_details.jsonl`. Chart: `bfcl_accuracy.png`.", ""]
    return "\n".join(parts)


def plot_accuracy(results: dict, path: str | os.PathLike) -> None:
    """Bar chart of Needle's accuracy per category, the anchors as markers where they exist.

    Uses the Agg canvas directly (no pyplot, no global backend switch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cats = list(results["categories"])
    acc = [100.0 * results["categories"][c]["accuracy"] for c in cats]
    fig = Figure(figsize=(max(7.0, 1.1 * len(cats) + 3.0), 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(cats)))
    bars = ax.bar(xs, acc, width=0.6, color="#3b7dd8", label=f"{results['model']} (this run)", zorder=2)
    for bar, value in zip(bars, acc):
        ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    n = len(ANCHORS)
    for k, (name, anchor) in enumerate(ANCHORS.items()):
        pts = [(x + (k - (n - 1) / 2) * 0.09, anchor["scores"][c]) for x, c in zip(xs, cats) if c in anchor["scores"]]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=markers[k % len(markers)], s=28,
                       zorder=3, label=name, edgecolors="black", linewidths=0.5)
    ax.set_xticks(xs)
    ax.set_xticklabels(cats, rotation=30, ha="right")
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    title = f"BFCL v4 (official AST checker): {results['model']}"
    if results.get("limit") is not None:
        title += f", first {results['limit']} per category"
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path)


# ---- CLI -------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=["bfcl", "heldout"],
                        help="bfcl: BFCL v4 with the official checker; heldout: held-out training requests "
                             "and several-calls variants of them (training/heldout_eval.py)")
    parser.add_argument("--model", default=None, metavar="DIR", help="model directory (default: the bundled model)")
    parser.add_argument("--categories", default=None, metavar="A,B",
                        help=f"comma-separated categories (default: all): {','.join(CATEGORIES)}")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N requests per category")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help=f"output directory (default: {DEFAULT_OUT_DIR}, or runs/eval/heldout)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--data", default=None, metavar="FILE", help="heldout: the held-out requests (JSONL)")
    parser.add_argument("--copies", type=int, default=6, metavar="N",
                        help="heldout: variants per request and kind (default 6)")


def run(args: argparse.Namespace) -> int:
    if args.benchmark == "heldout":
        from training.heldout_eval import run_heldout

        args.out = args.out or "runs/eval/heldout"
        return run_heldout(args)
    args.out = args.out or DEFAULT_OUT_DIR
    try:
        cats = _parse_categories(args.categories)
        load_ast_checker()
    except (ValueError, ImportError) as exc:
        print(f"needle eval: {exc}", file=sys.stderr)
        return 2
    try:
        predict = needle_predictor(args.model)
    except Exception as exc:  # no engine yet, missing model files, …
        print(f"needle eval: could not load the model{'' if args.model is None else ' from ' + str(args.model)}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    label = "Needle" if args.model is None else f"Needle ({Path(args.model).name})"
    results = evaluate_bfcl(predict, cats, args.limit, args.out, model_label=label, progress=not args.no_progress)
    print(accuracy_table(results))
    print(f"\n{results['requests']} requests in {results['wall_time_s']:.1f} s, "
          f"mean latency {results['mean_latency_ms']:.2f} ms per request")
    for kind, path in results["files"].items():
        print(f"{kind}: {path}")
    return 0
