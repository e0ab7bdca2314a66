"""The canonical example: validation, JSONL files, the datasets view, and `needle data stats`."""
import argparse
import copy
import json

import pytest

from needle_core.errors import NeedleError
from training.data import (
    check_example,
    decode_row,
    load_examples,
    read_jsonl,
    to_dataset,
    validate_example,
    write_jsonl,
)
from training.data_cli import (
    add_arguments,
    compute_stats,
    format_stats,
    is_literal,
    run,
)

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "days": {"type": "integer", "description": "Forecast days"},
        },
        "required": ["city"],
    },
}


def example(**overrides):
    ex = {
        "messages": [{"role": "user", "content": "Weather in Paris for 3 days?"}],
        "tools": [copy.deepcopy(WEATHER)],
        "calls": [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}],
        "source": "test",
        "teacher": "hand",
        "id": "test/1",
    }
    ex.update(overrides)
    return ex


def test_valid_example_has_no_problems():
    assert validate_example(example()) == []
    assert check_example(example())["id"] == "test/1"


def test_no_call_and_multi_turn_examples_are_valid():
    ex = example(messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "get_weather",
                                                              "arguments": {"city": "Paris"}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "{\"temp\": 21}"},
    ], calls=[])
    assert validate_example(ex) == []


@pytest.mark.parametrize("change, expected", [
    (lambda ex: ex.pop("source"), "source"),
    (lambda ex: ex.update(messages=[]), "messages"),
    (lambda ex: ex.update(calls=[{"name": "get_time", "arguments": {}}]), "unknown tool"),
    (lambda ex: ex.update(calls=[{"name": "get_weather", "arguments": {}}]), "city"),
    (lambda ex: ex["calls"][0]["arguments"].update(days="3"), "coerced"),
    (lambda ex: ex["tools"][0]["parameters"].pop("required"), "canonical"),
    (lambda ex: ex.update(tools=[WEATHER, WEATHER]), "duplicate"),
    (lambda ex: ex["messages"].append({"role": "assistant", "content": "Sunny."}), "assistant"),
    (lambda ex: ex["messages"].append({"role": "tool", "tool_call_id": "c9", "name": "x", "content": "1"}),
     "unknown call id"),
    (lambda ex: ex.update(extra=1), "extra"),
])
def test_problems_are_named(change, expected):
    ex = example()
    change(ex)
    problems = validate_example(ex)
    assert problems, "expected a problem"
    assert any(expected.lower() in p.lower() for p in problems), problems


def test_check_example_raises_with_the_id():
    with pytest.raises(NeedleError, match="test/1"):
        check_example(example(calls=[{"name": "nope", "arguments": {}}]))


def test_jsonl_round_trip(tmp_path):
    rows = [example(id=f"test/{i}") for i in range(3)]
    path = tmp_path / "sub" / "ex.jsonl"
    assert write_jsonl(path, rows) == 3
    assert read_jsonl(path) == rows


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(example()) + "\n{not json\n")
    with pytest.raises(NeedleError, match=r"bad.jsonl:2"):
        read_jsonl(path)


def test_dataset_round_trip(tmp_path):
    other_tool = {"name": "add", "description": "", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "items": {"type": "number"}}}, "required": ["xs"]}}
    rows = [example(), example(id="test/2", tools=[other_tool], calls=[{"name": "add", "arguments": {"xs": [1.5]}}],
                               messages=[{"role": "user", "content": "add 1.5"}])]
    path = tmp_path / "ex.jsonl"
    write_jsonl(path, rows)
    ds = load_examples(path)
    assert len(ds) == 2 and ds[1]["n_calls"] == 1
    assert [decode_row(r) for r in ds] == rows
    assert len(to_dataset([])) == 0


def test_is_literal():
    text = "book 2 rooms in new york for 3.5 nights"
    assert is_literal("New York", text) is True
    assert is_literal("Boston", text) is False
    assert is_literal(2, text) is True and is_literal(2.0, text) is True and is_literal(3.5, text) is True
    assert is_literal(True, text) is None and is_literal(None, text) is None


def test_stats_on_a_tiny_file(tmp_path, capsys):
    rows = [
        example(),  # Paris literal, 3 literal
        example(id="t/2", calls=[]),
        example(id="t/3", source="other", calls=[
            {"name": "get_weather", "arguments": {"city": "Lyon"}},
            {"name": "get_weather", "arguments": {"city": "Paris", "days": 7}},
            {"name": "get_weather", "arguments": {"city": "Paris"}}]),
    ]
    path = tmp_path / "tiny.jsonl"
    write_jsonl(path, rows)
    stats = compute_stats(read_jsonl(path))
    assert stats["examples"] == 3
    assert stats["sources"] == {"test": 2, "other": 1}
    assert stats["calls"] == {"1": 1, "0": 1, "3+": 1}
    assert stats["types"] == {"string": 4, "integer": 2}
    lit = stats["literal"]["all"]
    assert lit["string literal"] == 3 and lit["string not literal"] == 1
    assert lit["number literal"] == 1 and lit["number not literal"] == 1
    assert lit["enum option"] == 0
    assert "source" in format_stats(stats)

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["stats", str(path)])) == 0
    out = capsys.readouterr().out
    assert "3 examples" in out and "other" in out and "3+" in out and "literal" in out


def test_stats_count_enum_options():
    unit_tool = {"name": "convert", "description": "", "parameters": {"type": "object", "properties": {
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["unit"]}}
    ex = example(tools=[unit_tool], messages=[{"role": "user", "content": "How warm is it in F?"}],
                 calls=[{"name": "convert", "arguments": {"unit": "fahrenheit"}}])
    assert validate_example(ex) == []
    lit = compute_stats([ex])["literal"]["all"]
    assert lit["string not literal"] == 1 and lit["enum option"] == 1
