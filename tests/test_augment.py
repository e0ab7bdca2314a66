"""Augmentation keeps labels exact: every output validates, and each transform's invariant holds."""
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from training import augment as A
from training.data import validate_example
from training.importers import import_source

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")


def tool(name, props, required=None, description=""):
    return {"name": name, "description": description,
            "parameters": {"type": "object", "properties": props, "required": required or list(props)}}


CITY = {"type": "string", "description": "City name"}
WEATHER = tool("get_weather", {"city": CITY}, description="Current weather in a city.")
FLIGHTS = tool("searchFlights", {"origin_city": CITY, "max_stops": {"type": "integer", "description": "Stops"}},
               required=["origin_city"], description="Find flights leaving a city.")


def ex(i, text, tools, calls, source="synthetic", messages=None):
    return {"messages": messages or [{"role": "user", "content": text}], "tools": tools, "calls": calls,
            "source": source, "teacher": "hand", "id": f"{source}/{i}"}


SYNTHETIC = [
    ex(1, "What is the weather in Paris?", [WEATHER], [{"name": "get_weather", "arguments": {"city": "Paris"}}]),
    ex(2, "Weather in Lyon please", [WEATHER], [{"name": "get_weather", "arguments": {"city": "Lyon"}}]),
    ex(3, "Find flights from Berlin with at most 1 stop", [FLIGHTS],
       [{"name": "searchFlights", "arguments": {"origin_city": "Berlin", "max_stops": 1}}]),
    ex(4, "Tell me a joke", [WEATHER], []),
    ex(5, "", [WEATHER], [], messages=[
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "get_weather",
                                                              "arguments": {"city": "Rome"}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "{\"temp\": 20}"}]),
]


# Without ../shared/data the pool is the synthetic examples' tools plus these, from another field
# (negatives and distractors never take a tool of the request's own field).
UNRELATED_TOOLS = [
    {"name": "play_song", "description": "Play a song by its title.",
     "parameters": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}},
    {"name": "convert_currency", "description": "Convert an amount of money between currencies.",
     "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "to": {"type": "string"}},
                    "required": ["amount", "to"]}},
]


@pytest.fixture(scope="module")
def pool():
    if DATA.is_dir():
        return A.load_tool_pool(DATA)
    return A.pool_from_examples(SYNTHETIC + [{"source": "unrelated", "tools": UNRELATED_TOOLS}])


@pytest.fixture(scope="module")
def recorded():
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    limits = {"seal_tools": 25, "toolrl": 40, "glaive_demo": 20, "nestful": 15, "droidcall": 60, "apibank_lv3": 40}
    out = []
    for source, limit in limits.items():
        out += import_source(source, DATA, limit=limit, progress=False)[0]
    return out


def ctx_for(examples, pool):
    return A.make_context(examples, pool)


def kind_of(example):
    return example["id"].rsplit("~", 1)[-1].rstrip("0123456789")


def test_synthetic_examples_are_valid():
    for e in SYNTHETIC:
        assert validate_example(e) == [], e["id"]


@needs_data
def test_augment_recorded_data(recorded, pool):
    stats = Counter()
    out = A.augment(recorded, factor=2, seed=3, pool=pool, stats=stats)
    assert out[:len(recorded)] == recorded
    made = out[len(recorded):]
    assert len(made) == 2 * len(recorded) - sum(v for k, v in stats.items() if k.startswith("failed"))
    assert not [k for k in stats if k.startswith("failed")], stats
    kinds = Counter(kind_of(e) for e in made)
    assert kinds["variant"] and kinds["negative"] and kinds["merge"], kinds
    for e in made:
        assert validate_example(e) == [], e["id"]
    ids = [e["id"] for e in out]
    assert len(set(ids)) == len(ids)

    originals = {e["id"]: e for e in recorded}
    for e in made:
        kind = kind_of(e)
        if kind == "negative":
            assert e["calls"] == []
            base = originals[e["id"].rsplit("~", 1)[0]]
            assert not {t["name"] for t in e["tools"]} & {t["name"] for t in base["tools"]}
            assert e["messages"] == base["messages"]
        elif kind == "merge":
            assert len(e["calls"]) == 2
            first, second = e["id"].rsplit("~", 1)[0].split("+", 1)
            assert e["calls"] == originals[first]["calls"] + originals[second]["calls"]
        elif kind == "fan_out":
            base = originals[e["id"].rsplit("~", 1)[0]]["calls"][0]
            assert 2 <= len(e["calls"]) <= 3 and e["calls"][0] == base
            assert all(c["name"] == base["name"] for c in e["calls"])
            changed = [k for c in e["calls"][1:] for k in c["arguments"] if c["arguments"][k] != base["arguments"][k]]
            assert len(set(changed)) == 1, "one argument fans out, the others stay"
        elif kind == "zip":
            base = originals[e["id"].rsplit("~", 1)[0]]["calls"][0]
            assert 2 <= len(e["calls"]) <= 3 and e["calls"][0] == base
            changed = {k for c in e["calls"][1:] for k in c["arguments"] if c["arguments"][k] != base["arguments"][k]}
            assert 1 <= len(changed) <= 2, "one or two arguments change together"
        elif kind == "repeat":
            base = originals[e["id"].rsplit("~", 1)[0]]["calls"][0]
            assert len(e["calls"]) == 2 and e["calls"][0] == base and e["calls"][1] != base
            assert e["calls"][1]["name"] == base["name"]
        else:
            assert len(e["calls"]) == len(originals[e["id"].rsplit("~", 1)[0]]["calls"])


@needs_data
def test_augment_is_deterministic(recorded, pool):
    sample = recorded[:60]
    assert A.augment(sample, factor=2, seed=7, pool=pool) == A.augment(sample, factor=2, seed=7, pool=pool)
    assert A.augment(sample, factor=2, seed=7, pool=pool) != A.augment(sample, factor=2, seed=8, pool=pool)


def test_augment_without_pool_uses_the_examples_tools(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ../shared/data is not there
    out = A.augment(SYNTHETIC, factor=3, seed=0)
    assert len(out) > len(SYNTHETIC)
    assert all(validate_example(e) == [] for e in out)


def test_negative_has_no_calls_and_unrelated_tools(pool):
    rng = random.Random(0)
    ctx = ctx_for(SYNTHETIC, pool)
    made = [A.make_negative(SYNTHETIC[0], ctx, rng) for _ in range(20)]
    made = [m for m in made if m]
    assert made
    for m in made:
        assert m["calls"] == [] and validate_example(m) == []
        assert "get_weather" not in {t["name"] for t in m["tools"]}
        for t in m["tools"]:
            assert not A.content_words(t["name"]) & A.content_words("What is the weather in Paris?")
    assert A.make_negative(SYNTHETIC[4], ctx, rng) is None  # history examples keep their tools


def test_merge_makes_two_parallel_calls(pool):
    rng = random.Random(1)
    ctx = ctx_for(SYNTHETIC, pool)
    merged = next(m for m in (A.merge(SYNTHETIC[2], ctx, rng) for _ in range(20)) if m)
    assert len(merged["calls"]) == 2 and validate_example(merged) == []
    assert merged["calls"][0] == SYNTHETIC[2]["calls"][0]
    text = merged["messages"][0]["content"]
    assert "Berlin" in text and (" and also " in text or "; then " in text or " Also, " in text)
    for call in merged["calls"]:
        for value in call["arguments"].values():
            assert str(value) in text
    assert A.merge(SYNTHETIC[3], ctx, rng) is None  # no call: nothing to merge


def test_repeat_says_the_request_twice_with_other_values(pool):
    rng = random.Random(0)
    ctx = ctx_for(SYNTHETIC, pool)
    made = [m for m in (A.repeat(SYNTHETIC[2], ctx, rng) for _ in range(10)) if m]
    assert made, "a request with a number argument can always be repeated"
    for m in made:
        assert validate_example(m) == []
        first, second = m["calls"]
        assert first == SYNTHETIC[2]["calls"][0] and second["name"] == first["name"] and second != first
        text = m["messages"][0]["content"]
        assert text.startswith("Find flights from Berlin with at most 1 stop")
        for call in m["calls"]:
            for value in call["arguments"].values():
                assert str(value) in text
    assert A.repeat(SYNTHETIC[3], ctx, rng) is None  # no call: nothing to repeat


def test_zip_changes_two_arguments_together(pool):
    bmi = tool("bmi", {"height": {"type": "integer"}, "weight": {"type": "integer"}})
    base = ex(7, "Compute the BMI for a height of 180 cm and a weight of 75 kg.", [bmi],
              [{"name": "bmi", "arguments": {"height": 180, "weight": 75}}])
    ctx = ctx_for(SYNTHETIC + [base], pool)
    made = [m for m in (A.zip_values(base, ctx, random.Random(seed)) for seed in range(30)) if m]
    styles = Counter("respectively" in m["messages"][0]["content"] for m in made)
    assert styles[True] and styles[False], "both wordings are made"
    for m in made:
        assert validate_example(m) == []
        text = m["messages"][0]["content"]
        first, *later = m["calls"]
        assert first == base["calls"][0] and 1 <= len(later) <= 2
        for call in later:
            assert call["name"] == "bmi" and all(call["arguments"][k] != first["arguments"][k] for k in ("height", "weight"))
        values = [str(v) for c in m["calls"] for v in c["arguments"].values()]
        assert len(set(values)) == len(values) and all(v in text for v in values)
        if "respectively" in text:
            heights = [str(c["arguments"]["height"]) for c in m["calls"]]
            listed = " and ".join(heights) if len(heights) == 2 else f"{heights[0]}, {heights[1]} and {heights[2]}"
            assert text.endswith(" respectively.") and f"height of {listed} cm" in text
        else:
            assert text.startswith("Compute the BMI for a height of 180 cm and a weight of 75 kg")
    assert A.zip_values(SYNTHETIC[3], ctx, random.Random(0)) is None  # no call: nothing to change


def test_rename_is_consistent(pool):
    rng = random.Random(4)
    ctx = ctx_for(SYNTHETIC, pool)
    for base in (SYNTHETIC[2], SYNTHETIC[4]):
        for _ in range(10):
            new = A.rename(base, ctx, rng)
            if new is None:
                continue
            assert validate_example(new) == []
            old_tool, new_tool = base["tools"][0], new["tools"][0]
            key_map = dict(zip(old_tool["parameters"]["properties"], new_tool["parameters"]["properties"]))
            assert new_tool["parameters"]["required"] == [key_map[k] for k in old_tool["parameters"]["required"]]
            for old_call, new_call in zip(base["calls"], new["calls"]):
                assert new_call["name"] == new_tool["name"]
                assert new_call["arguments"] == {key_map[k]: v for k, v in old_call["arguments"].items()}
            for old_msg, new_msg in zip(base["messages"], new["messages"]):
                assert old_msg["content"] == new_msg["content"]
                for oc, nc in zip(old_msg.get("tool_calls", []), new_msg.get("tool_calls", [])):
                    assert nc["name"] == new_tool["name"]
                    assert nc["arguments"] == {key_map[k]: v for k, v in oc["arguments"].items()}
                if new_msg["role"] == "tool":
                    assert new_msg["name"] == new_tool["name"]


def test_rename_keeps_names_the_request_mentions(pool):
    base = ex(9, "Call get_weather for Oslo", [WEATHER], [{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    rng = random.Random(0)
    for _ in range(10):
        new = A.rename(base, ctx_for([base], pool), rng)
        assert new is None or new["tools"][0]["name"] == "get_weather"


def test_substitute_replaces_in_text_and_calls(pool):
    ctx = ctx_for(SYNTHETIC, pool)
    # values are banked by parameter name and shape: origin_city's "Berlin" is not a city swap
    assert ctx.value_bank[("city", "title")] == ["Lyon", "Paris"]
    new = A.substitute(SYNTHETIC[0], ctx, random.Random(0))
    assert new["calls"][0]["arguments"] == {"city": "Lyon"} and validate_example(new) == []
    assert new["messages"][0]["content"] == "What is the weather in Lyon?"


def test_substitute_replaces_history_consistently(pool):
    bank_source = SYNTHETIC + [ex(8, "Weather in Rome and Paris", [WEATHER],
                                 [{"name": "get_weather", "arguments": {"city": "Rome"}}])]
    base = ex(7, "", [WEATHER], [{"name": "get_weather", "arguments": {"city": "Rome"}}], messages=[
        {"role": "user", "content": "Weather in Rome? Rome, I said."},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "get_weather",
                                                              "arguments": {"city": "Rome"}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "{\"city\": \"Rome\"}"},
        {"role": "user", "content": "And again for Rome"}])
    new = A.substitute(base, ctx_for(bank_source, pool), random.Random(0))
    assert new is not None and validate_example(new) == []
    assert "Rome" not in json.dumps(new)
    value = new["calls"][0]["arguments"]["city"]
    assert new["messages"][1]["tool_calls"][0]["arguments"]["city"] == value
    assert value in new["messages"][2]["content"] and new["messages"][0]["content"].count(value) == 2


def test_distractors_and_shuffle_keep_the_label(pool):
    rng = random.Random(2)
    ctx = ctx_for(SYNTHETIC, pool)
    for base in SYNTHETIC:
        new = A.add_distractors(base, ctx, rng, k=3)
        assert new is not None and validate_example(new) == []
        assert new["calls"] == base["calls"] and new["messages"] == base["messages"]
        added = new["tools"][len(base["tools"]):]
        assert added and not {t["name"] for t in added} & {t["name"] for t in base["tools"]}
        shuffled = A.shuffle_order(new, ctx, rng)
        assert validate_example(shuffled) == []
        assert sorted(t["name"] for t in shuffled["tools"]) == sorted(t["name"] for t in new["tools"])
        assert shuffled["calls"] == new["calls"]


def test_distractors_for_no_call_examples_are_unrelated(pool):
    rng = random.Random(5)
    ctx = ctx_for(SYNTHETIC, pool)
    base = ex(6, "What is the capital of France?", [], [])
    request = A.content_words(base["messages"][0]["content"])
    for _ in range(10):
        new = A.add_distractors(base, ctx, rng)
        if new:
            for t in new["tools"]:
                assert not A.content_words(t["name"]) & request


def test_name_words():
    assert A.name_words("getWeatherForecast") == ["get", "weather", "forecast"]
    assert A.name_words("RentalCars.GetCarsAvailable") == ["rental", "cars", "get", "cars", "available"]
    assert A.name_words("HTTPServer_start") == ["http", "server", "start"]


@needs_data
def test_augment_weights_choose_the_kinds(recorded, pool):
    """``weights`` override `KIND_WEIGHTS` by kind: a kind at 0 is never made; unknown kinds are refused."""
    stats = Counter()
    A.augment(recorded[:40], factor=3, seed=2, pool=pool, stats=stats, weights={"zip": 0, "negative": 0})
    assert stats and not any(k.endswith((": zip", ": negative")) for k in stats), stats
    with pytest.raises(ValueError, match="unknown augmentation kind.*'zipper'"):
        A.augment(recorded[:2], weights={"zipper": 1})


def test_restate_names_every_argument_before_its_value(pool):
    """`restate` asks for the same call in words: the tool's description as a request, each value
    after its parameter's name; other calls (none, several, non-scalar values) are left alone."""
    ctx = ctx_for(SYNTHETIC, pool)
    made = [A.restate(SYNTHETIC[2], ctx, random.Random(seed)) for seed in range(12)]
    assert all(m is not None for m in made)
    for m in made:
        text = m["messages"][0]["content"]
        assert m["calls"] == SYNTHETIC[2]["calls"] and validate_example(m) == []
        assert text.startswith(("Find flights leaving a city", "Please find flights", "I need to find flights"))
        assert "origin city" in text and "max stops" in text
        assert text.index("origin city") < text.index("Berlin") and text.index("max stops") < text.index("1")
    assert len({m["messages"][0]["content"] for m in made}) > 3  # templates and argument order vary
    assert A.restate(SYNTHETIC[3], ctx, random.Random(0)) is None  # no call
    listed = ex(9, "Flights from Oslo or Bergen", [FLIGHTS],
                [{"name": "searchFlights", "arguments": {"origin_city": ["Oslo", "Bergen"]}}])
    assert A.restate(listed, ctx, random.Random(0)) is None
    assert A._as_request("Calculates the area of a circle.") == "Calculate the area of a circle"
    assert A._as_request("Fetches the latest news. Needs a key.") == "Fetch the latest news"
    assert A._as_request("The weather API") is None


_DISTRACTORS_OF_TWO_FIELDS = """
import json, random, sys
from training import augment as A
pool = A.load_tool_pool(sys.argv[1])
fields = sorted(pool.by_field)[:12]
out = []
for a, b in zip(fields[::2], fields[1::2]):
    tools = [pool.tools[pool.by_field[f][0]] for f in (a, b)]
    ex = {"messages": [{"role": "user", "content": "do both"}], "tools": tools, "source": "x", "teacher": "t",
          "id": "x/1", "calls": [{"name": t["name"], "arguments": {}} for t in tools]}
    ctx = A.make_context([ex], pool)
    made = [A.add_distractors(ex, ctx, random.Random(seed)) for seed in range(20)]
    out += [[t["name"] for t in m["tools"]] if m else None for m in made]
print(json.dumps(out))
"""


@needs_data
def test_distractors_do_not_depend_on_string_hashing():
    """Same examples + seed -> same output in every process: the same-field candidates of a request
    whose tools come from two fields were once listed in set order, which Python's string hashing
    changes from run to run."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    runs = [subprocess.run([sys.executable, "-c", _DISTRACTORS_OF_TWO_FIELDS, str(DATA)], cwd=root, check=True,
                           capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2", "3")]
    assert json.loads(runs[0]) and runs[0] == runs[1] == runs[2]
