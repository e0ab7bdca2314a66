"""`needle eval heldout`: held-out requests and their several-calls variants, scored exactly."""
import json
import types

from needle_core.cli import main
from training.heldout_eval import evaluate_heldout, heldout_set


def tool(name, props):
    return {"name": name, "description": f"{name} tool",
            "parameters": {"type": "object", "properties": props, "required": list(props)}}


BMI = tool("bmi", {"height": {"type": "integer"}, "weight": {"type": "integer"}})
WEATHER = tool("get_weather", {"city": {"type": "string", "description": "City name"}})
HELDOUT = [
    {"messages": [{"role": "user", "content": "Compute the BMI for a height of 180 cm and a weight of 75 kg."}],
     "tools": [BMI], "calls": [{"name": "bmi", "arguments": {"height": 180, "weight": 75}}],
     "source": "synthetic", "teacher": "hand", "id": "synthetic/1"},
    {"messages": [{"role": "user", "content": "Tell me a joke"}], "tools": [WEATHER], "calls": [],
     "source": "synthetic", "teacher": "hand", "id": "synthetic/2"},
]


def test_heldout_set_adds_several_calls_variants():
    labelled = heldout_set(HELDOUT, copies=3)
    kinds = [k for k, _ in labelled]
    assert kinds[:2] == ["plain", "plain"] and [ex for _, ex in labelled[:2]] == HELDOUT
    variants = labelled[2:]
    assert variants and {k for k, _ in variants} <= {"fan_out", "repeat", "zip"}
    for kind, ex in variants:
        assert ex["id"].startswith("synthetic/1~" + kind) and len(ex["calls"]) >= 2
        assert all(c["name"] == "bmi" for c in ex["calls"])


def test_exact_match_per_kind():
    """A model that answers the plain requests right and never calls twice: plain 1.0, variants 0."""
    labelled = heldout_set(HELDOUT, copies=2)

    class OneCall:
        def call(self, messages, tools):
            gold = next(ex["calls"] for _, ex in labelled if ex["messages"] == messages)[:1]
            calls = [types.SimpleNamespace(name=c["name"], arguments=c["arguments"]) for c in gold]
            return types.SimpleNamespace(calls=calls, logprob=0.0)

    results = evaluate_heldout(OneCall(), labelled, progress=False)
    assert results["kinds"]["plain"] == {"correct": 2, "total": 2, "accuracy": 1.0}
    assert all(r["correct"] == 0 for k, r in results["kinds"].items() if k != "plain")
    assert results["total"] == len(labelled) and results["accuracy"] == 2 / len(labelled)


def test_cli_scores_the_bundled_model(tmp_path, capsys):
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(ex) + "\n" for ex in HELDOUT))
    assert main(["eval", "heldout", "--data", str(data), "--copies", "1", "--out", str(tmp_path), "--no-progress"]) == 0
    results = json.loads((tmp_path / "heldout_results.json").read_text())
    assert results["total"] == len(heldout_set(HELDOUT, copies=1)) and 0 <= results["accuracy"] <= 1
    assert "all" in capsys.readouterr().out
    assert main(["eval", "heldout", "--out", str(tmp_path)]) == 2  # no --data: a clear error
