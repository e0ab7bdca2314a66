"""`needle eval bfcl` (training/evaluate.py) with fake predictors against the official BFCL checker."""

from __future__ import annotations

import argparse
import json
import sys
import types

import pytest

from training import evaluate as ev

AST_CATEGORIES = [c for c in ev.CATEGORIES if c not in ev.IRRELEVANCE_CATEGORIES]
LIMIT = 5  # the first 5 of each category: a first-possible-answer oracle is right on all of them


@pytest.fixture(scope="module")
def checker():
    try:
        return ev.load_ast_checker()
    except ImportError as exc:
        pytest.skip(f"bfcl-eval is not installed ({exc})")


def _first_possible(value):
    """Resolve BFCL possible answers to one concrete value: the first option of every parameter;
    an option of "" means "may be left out", so the parameter is dropped."""
    if isinstance(value, dict):
        out = {}
        for key, options in value.items():
            choice = options[0] if isinstance(options, list) and options else options
            if choice != "":
                out[key] = _first_possible(choice)
        return out
    if isinstance(value, list):
        return [_first_possible(v) for v in value]
    return value


def _key(messages, tools):
    return json.dumps([messages, [t["name"] for t in tools]], sort_keys=True)


@pytest.fixture(scope="module")
def oracle(checker):
    table = {}
    for category in AST_CATEGORIES:
        for entry in ev.load_category(category, LIMIT):
            calls = [
                {"name": name, "arguments": _first_possible(args)}
                for call in entry["possible_answer"]
                for name, args in call.items()
            ]
            table[_key(ev.bfcl_messages(entry["question"]), entry["function"])] = calls

    def predict(messages, tools):  # unknown requests (irrelevance) get no call
        return table.get(_key(messages, tools), [])

    return predict


def _details(out_dir):
    return [json.loads(line) for line in (out_dir / "bfcl_details.jsonl").read_text().splitlines()]


# ---- the checker and the data ----------------------------------------------------------------------
def test_stand_in_config_keeps_dotted_names(checker):
    import os

    assert os.environ.get("BFCL_PROJECT_ROOT")
    mapping = sys.modules["bfcl_eval.constants.model_config"].MODEL_CONFIG_MAPPING
    assert mapping[ev.CHECKER_MODEL_NAME].underscore_to_dot is False
    entry = next(e for e in ev.load_category("simple_python", 5) if e["id"] == "simple_python_1")
    assert entry["function"][0]["name"] == "math.factorial"
    assert ev.score(checker, "simple_python", entry, [{"math.factorial": {"number": 5}}])[0] is True
    assert ev.score(checker, "simple_python", entry, [{"math_factorial": {"number": 5}}])[0] is False


def test_data_shape(checker):
    entries = ev.load_category("live_simple", 3)
    assert len(entries) == 3
    for entry in entries:
        assert set(entry) >= {"id", "question", "function", "possible_answer"}
        msgs = ev.bfcl_messages(entry["question"])
        assert msgs and all(set(m) == {"role", "content"} for m in msgs)
        assert msgs[-1]["role"] == "user"
    assert all(e["possible_answer"] is None for e in ev.load_category("irrelevance", 3))
    with pytest.raises(ValueError):
        ev.load_category("multi_turn_base")


# ---- scoring --------------------------------------------------------------------------------------
def test_oracle_gets_everything_right(tmp_path, oracle):
    results = ev.evaluate_bfcl(oracle, AST_CATEGORIES, LIMIT, tmp_path, progress=False)
    for category in AST_CATEGORIES:
        r = results["categories"][category]
        assert (r["correct"], r["total"], r["accuracy"]) == (LIMIT, LIMIT, 1.0), (category, r)
    assert all(d["valid"] and d["error_type"] is None for d in _details(tmp_path))


def test_no_call_right_on_irrelevance_wrong_on_simple(tmp_path, checker):
    results = ev.evaluate_bfcl(
        lambda m, t: [], "irrelevance,live_irrelevance,simple_python,parallel", 4, tmp_path, progress=False
    )
    cats = results["categories"]
    assert cats["irrelevance"]["correct"] == cats["live_irrelevance"]["correct"] == 4
    assert cats["simple_python"]["correct"] == cats["parallel"]["correct"] == 0
    assert cats["simple_python"]["errors"] == {"simple_function_checker:wrong_count": 4}


def test_a_call_is_wrong_on_irrelevance(tmp_path, checker):
    def call_first_tool(messages, tools):
        return [{"name": tools[0]["name"], "arguments": {}}]

    results = ev.evaluate_bfcl(call_first_tool, ["irrelevance"], 3, tmp_path, progress=False)
    assert results["categories"]["irrelevance"]["errors"] == {"irrelevance_error:decoder_success": 3}


def test_predict_raising_is_wrong_not_a_crash(tmp_path, checker):
    def boom(messages, tools):
        raise RuntimeError("engine exploded")

    results = ev.evaluate_bfcl(boom, ["simple_python", "irrelevance"], 3, tmp_path, progress=False)
    for category in ("simple_python", "irrelevance"):  # irrelevance too: a crash is not "no call"
        assert results["categories"][category]["correct"] == 0
        assert results["categories"][category]["errors"] == {"needle:predict_error": 3}
    details = _details(tmp_path)
    assert len(details) == 6
    assert all(d["error"] == ["RuntimeError: engine exploded"] and d["prediction"] is None for d in details)


def test_malformed_predictions_are_wrong(tmp_path, checker):
    outputs = iter(["not a list", [{"arguments": {}}], [{"name": "x", "arguments": [1]}]])
    results = ev.evaluate_bfcl(lambda m, t: next(outputs), ["simple_python"], 3, tmp_path, progress=False)
    assert results["categories"]["simple_python"]["errors"] == {"needle:bad_prediction": 3}


def test_to_decoded_accepts_objects_and_json_strings():
    call = types.SimpleNamespace(name="f", arguments={"a": 1})
    record, decoded = ev.to_decoded([call, {"name": "g", "arguments": '{"b": [2]}'}, {"name": "h"}])
    assert decoded == [{"f": {"a": 1}}, {"g": {"b": [2]}}, {"h": {}}]
    assert record[1] == {"name": "g", "arguments": {"b": [2]}}
    assert ev.to_decoded(None) == ([], [])
    with pytest.raises(TypeError):
        ev.to_decoded({"name": "f"})


# ---- reports --------------------------------------------------------------------------------------
def test_report_files(tmp_path, oracle):
    cats = ["simple_python", "multiple", "irrelevance"]
    results = ev.evaluate_bfcl(oracle, cats, 2, tmp_path, model_label="Needle", progress=False)
    saved = json.loads((tmp_path / "bfcl_results.json").read_text())
    assert set(saved["categories"]) == set(cats)
    assert saved["categories"]["simple_python"] == {**results["categories"]["simple_python"]}
    assert saved["requests"] == 6 and saved["wall_time_s"] >= 0 and saved["mean_latency_ms"] >= 0
    assert len(_details(tmp_path)) == 6

    png = (tmp_path / "bfcl_accuracy.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000

    md = (tmp_path / "bfcl_report.md").read_text()
    for anchor in ("Qwen3-0.6B", "Hammer2.1-0.5b", "Granite-4.0-350m", "FunctionGemma", "Llama-3.2-1B"):
        assert anchor in md
    assert "| Qwen3-0.6B (FC) | 0.6B | 86.5 | 86.0 | 80.8 |" in md
    assert "| **Needle** (this run) | — | **100.0** | **100.0** | **100.0** |" in md
    assert "first 2 requests per category" in md


# ---- the default predictor and the CLI ------------------------------------------------------------
class _FakeResult:
    def __init__(self, calls):
        self.calls = calls
        self.confidence = 0.75


class _FakeNeedle:
    seen: list = []

    def __init__(self, model_dir=None):
        self.model_dir = model_dir

    def call(self, messages, tools):
        _FakeNeedle.seen.append((messages, tools))
        fn = tools[0]["function"]
        return _FakeResult([types.SimpleNamespace(name=fn["name"], arguments={"x": 1})])


def test_needle_predictor_uses_public_api(monkeypatch):
    import needle_core

    monkeypatch.setitem(vars(needle_core), "Needle", _FakeNeedle)  # no lazy engine import
    _FakeNeedle.seen = []
    predict = ev.needle_predictor("some/dir")
    tool = {
        "name": "a.b",
        "description": "d",
        "parameters": {
            "type": "dict",
            "required": ["x"],
            "properties": {
                "x": {"type": "float"},
                "y": {"type": "tuple", "items": {"type": "any"}},
                "z": {"type": "dict", "properties": {"w": {"type": "integer"}}},
            },
        },
    }
    answer = predict([{"role": "user", "content": "hi"}], [tool])
    assert answer["calls"] == [{"name": "a.b", "arguments": {"x": 1}}] and answer["confidence"] == 0.75
    sent = _FakeNeedle.seen[0][1][0]
    assert sent["type"] == "function" and sent["function"]["name"] == "a.b"
    params = sent["function"]["parameters"]
    assert params["type"] == "object" and params["required"] == ["x"]
    assert params["properties"]["x"]["type"] == "number"
    assert params["properties"]["y"] == {"type": "array", "items": {"type": "string"}}
    assert params["properties"]["z"]["type"] == "object"
    assert params["properties"]["z"]["properties"]["w"]["type"] == "integer"
    assert tool["parameters"]["type"] == "dict"  # the raw tool is untouched
    assert predict([{"role": "user", "content": "hi"}], [])["calls"] == []  # no tools: no call, engine not asked
    assert len(_FakeNeedle.seen) == 1


def test_cli_run(tmp_path, monkeypatch, capsys, checker):
    monkeypatch.setattr(ev, "needle_predictor", lambda model_dir=None: lambda m, t: [])
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    args = parser.parse_args(
        ["bfcl", "--categories", "irrelevance,simple_python", "--limit", "2", "--out", str(tmp_path), "--no-progress"]
    )
    assert ev.run(args) == 0
    out = capsys.readouterr().out
    assert "| **Needle** (this run) | — | **100.0** | **0.0** |" in out
    assert "Llama-3.2-1B-Instruct (FC)" in out
    assert (tmp_path / "bfcl_results.json").exists()

    bad = parser.parse_args(["bfcl", "--categories", "nope", "--out", str(tmp_path)])
    assert ev.run(bad) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["mmlu"])


def test_confidence_is_recorded_and_calibration_reported(tmp_path, checker):
    """A predictor answering {"calls", "confidence"}: always no call, sure of it on irrelevance
    (right: ECE 0) and at 0.2 on simple_python (wrong: ECE 0.2)."""
    def predict(messages, tools):
        irrelevant = predict.category == "irrelevance"
        return {"calls": [], "confidence": 1.0 if irrelevant else 0.2}

    results = {}
    for category in ("irrelevance", "simple_python"):
        predict.category = category
        results[category] = ev.evaluate_bfcl(predict, category, 4, tmp_path / category, progress=False)
        assert all("confidence" in d for d in _details(tmp_path / category))
    assert results["irrelevance"]["calibration"] == {"requests": 4, "mean_confidence": 1.0, "accuracy": 1.0, "ece": 0.0}
    cal = results["simple_python"]["calibration"]
    assert cal["accuracy"] == 0.0 and cal["ece"] == pytest.approx(0.2)
    assert "expected calibration error 0.200" in (tmp_path / "simple_python" / "bfcl_report.md").read_text()
    assert ev.evaluate_bfcl(lambda m, t: [], "irrelevance", 2, tmp_path / "plain", progress=False)["calibration"] is None
