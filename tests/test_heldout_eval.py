"""`needle eval heldout`: held-out requests and their variants (several calls, reworded), scored exactly."""
import json
import types

from needle_core.cli import main
from training.heldout_eval import REWORDED, SEVERAL_CALLS, evaluate_heldout, heldout_set


def tool(name, description, props):
    return {"name": name, "description": description,
            "parameters": {"type": "object", "properties": props, "required": list(props)}}


BMI = tool("bmi", "Computes the body mass index of a person.", {"height": {"type": "integer"}, "weight": {"type": "integer"}})
WEATHER = tool("get_weather", "Weather for a city", {"city": {"type": "string", "description": "City name"}})
HELDOUT = [
    {"messages": [{"role": "user", "content": "Compute the BMI for a height of 180 cm and a weight of 75 kg."}],
     "tools": [BMI], "calls": [{"name": "bmi", "arguments": {"height": 180, "weight": 75}}],
     "source": "synthetic", "teacher": "hand", "id": "synthetic/1"},
    {"messages": [{"role": "user", "content": "Tell me a joke"}], "tools": [WEATHER], "calls": [],
     "source": "synthetic", "teacher": "hand", "id": "synthetic/2"},
]


def test_heldout_set_adds_several_calls_and_reworded_variants():
    labelled = heldout_set(HELDOUT, copies=3)
    kinds = [k for k, _ in labelled]
    assert kinds[:2] == ["plain", "plain"] and [ex for _, ex in labelled[:2]] == HELDOUT
    variants = labelled[2:]
    assert {k for k, _ in variants} == set(SEVERAL_CALLS + REWORDED)
    for kind, ex in variants:
        assert ex["id"].startswith(("synthetic/1~" + kind, "synthetic/2~" + kind))
        original = HELDOUT[0] if ex["id"].startswith("synthetic/1") else HELDOUT[1]
        if kind in SEVERAL_CALLS:
            assert len(ex["calls"]) >= 2 and all(c["name"] == "bmi" for c in ex["calls"])
        else:  # the same answer in other words or tool names: as many calls, same values
            assert ex["messages"] != original["messages"] or ex["tools"] != original["tools"]
            assert len(ex["calls"]) == len(original["calls"])


def test_exact_match_per_kind():
    """A model that answers every request's first call right and never calls twice: the plain
    and reworded kinds 1.0, the several-calls kinds 0."""
    labelled = heldout_set(HELDOUT, copies=2)

    class OneCall:
        def call(self, messages, tools):
            gold = next(ex["calls"] for _, ex in labelled if ex["messages"] == messages and ex["tools"] == tools)[:1]
            calls = [types.SimpleNamespace(name=c["name"], arguments=c["arguments"]) for c in gold]
            return types.SimpleNamespace(calls=calls, logprob=0.0)

    results = evaluate_heldout(OneCall(), labelled, progress=False)
    assert results["kinds"]["plain"] == {"correct": 2, "total": 2, "accuracy": 1.0}
    assert all(r["accuracy"] == (0 if k in SEVERAL_CALLS else 1) for k, r in results["kinds"].items())
    assert results["groups"]["plain and reworded"]["accuracy"] == 1 and results["groups"]["several calls"]["correct"] == 0
    several = results["groups"]["several calls"]["total"]
    assert results["total"] == len(labelled) and results["correct"] == len(labelled) - several


def test_cli_scores_the_bundled_model(tmp_path, capsys):
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(ex) + "\n" for ex in HELDOUT))
    assert main(["eval", "heldout", "--data", str(data), "--copies", "1", "--out", str(tmp_path), "--no-progress"]) == 0
    results = json.loads((tmp_path / "heldout_results.json").read_text())
    assert results["total"] == len(heldout_set(HELDOUT, copies=1)) and 0 <= results["accuracy"] <= 1
    assert "all" in capsys.readouterr().out
    assert main(["eval", "heldout", "--out", str(tmp_path)]) == 2  # no --data: a clear error
