"""Listed values: which spans count as a list, and the calls added for them."""
from __future__ import annotations

import jsonschema
import pytest

from needle_core.callformat import Renderer
from needle_core.decoding import CallDecoder, encode_calls
from needle_core.listed_values import listed_with
from needle_core.schema import to_tool_spec

RENDERER = Renderer()


@pytest.mark.parametrize("text, value, listed", [
    ("the monthly payment for a loan term of 15, 20 and 30 years", "15", ["20", "30"]),
    ("the future value for 1,5 and 10 years", "10", ["1", "5"]),
    ("purchases of $30.45, $52.33 and $11.23", "52.33", ["30.45", "11.23"]),
    ("the winning percentage of Lakers and Bulls in 2018", "Bulls", ["Lakers"]),
    ("restaurants in New York and Los Angeles tonight", "New York", ["Los Angeles"]),
    ("UUIDs for 'LazarBeam', 'MrBeast', and 'Ninja' from Minecraft", "LazarBeam", ["MrBeast", "Ninja"]),
    ("RGB values for navy, purple and maroon?", "purple", ["navy", "maroon"]),
    ("trending music in the US and UK regions", "US", ["UK"]),
    ("concerts in San Francisco, California and New York, New York", "New York, New York",
     ["San Francisco, California"]),
    ("vegan places in Los Angeles, CA, then San Francisco, CA and Seattle, WA", "Seattle, WA", ["San Francisco, CA"]),
    ("a recipe with potatoes, carrots, and onions and serves 4 people", "potatoes", ["carrots", "onions"]),
    # not lists
    ("concerts in San Francisco, California and New York", "San Francisco", []),  # "California" is no city
    ("a house of 3000 sq ft in New York and 4000 sq ft in Los Angeles", "New York", []),
    ("occurrences of gold and retrieve the toxicity", "gold", []),  # two phrases, not two minerals
    ("a 35-year-old with high stress level and poor sleep", "high", []),
    ("the data between 13:31 and 09:06", "13", []),  # a time, not the number 13
    ("the energy infrastructure in Bavaria, Germany", "Bavaria", []),  # a place: no "and"
    ("numbers 10, 20, 30 in a row", "20", []),
    ("Paris and then Rome", "Paris", []),
    ("the weather in Paris or Rome", "Paris", []),  # a choice
])
def test_listed_with(text, value, listed):
    start = text.index(value)
    numeric = value.replace(".", "").isdigit()
    assert [text[a:b] for a, b in listed_with(text, start, start + len(value), numeric)] == listed


MORTGAGE = to_tool_spec({"name": "mortgage", "parameters": {"type": "object", "properties": {
    "amount": {"type": "number"}, "years": {"type": "integer", "maximum": 25}}, "required": ["amount", "years"]}})
TRADE = to_tool_spec({"name": "trade_volume", "parameters": {"type": "object", "properties": {
    "exporter": {"type": "string"}, "importer": {"type": "string"}}, "required": ["exporter", "importer"]}})
STANDINGS = to_tool_spec({"name": "standing", "parameters": {"type": "object", "properties": {
    "team": {"type": "string"}, "season": {"type": "integer"}}, "required": ["team", "season"]}})


def _decoded(request: str, spec, calls: list[dict], max_calls: int = 8) -> list[dict]:
    decoder = CallDecoder(RENDERER.render([{"role": "user", "content": request}], [spec]), [spec],
                          max_calls=max_calls)
    encode_calls(decoder, calls)
    return decoder.calls()


def test_a_call_is_repeated_for_each_listed_value_its_schema_accepts():
    """10 and 20 years get calls of their own; 30 is above the schema's maximum and gets none;
    the amount, said once, is shared."""
    calls = _decoded("Mortgage on $400,000 for 10, 20 and 30 years", MORTGAGE,
                     [{"name": "mortgage", "arguments": {"amount": 400000, "years": 10}}])
    assert [c["arguments"] for c in calls] == [{"amount": 400000, "years": 10}, {"amount": 400000, "years": 20}]
    for call in calls:
        jsonschema.validate(call["arguments"], MORTGAGE.parameters)


def test_values_another_argument_already_took_are_not_a_list():
    """"China and India" name the exporter and the importer of one call, not two calls."""
    call = {"name": "trade_volume", "arguments": {"exporter": "China", "importer": "India"}}
    assert _decoded("Trade volume between China and India", TRADE, [call]) == [call]


def test_several_listed_arguments_give_every_combination_or_go_together_respectively():
    calls = _decoded("Winning percentage of Lakers and Bulls in seasons 2018 and 2020", STANDINGS,
                     [{"name": "standing", "arguments": {"team": "Lakers", "season": 2018}}])
    assert sorted((c["arguments"]["team"], c["arguments"]["season"]) for c in calls) == [
        ("Bulls", 2018), ("Bulls", 2020), ("Lakers", 2018), ("Lakers", 2020)]
    calls = _decoded("Winning percentage of Lakers and Bulls in 2018 and 2020 respectively", STANDINGS,
                     [{"name": "standing", "arguments": {"team": "Lakers", "season": 2018}}])
    assert [(c["arguments"]["team"], c["arguments"]["season"]) for c in calls] == [("Lakers", 2018), ("Bulls", 2020)]


GCD = to_tool_spec({"name": "gcd", "parameters": {"type": "object", "properties": {
    "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}})
EMPIRE = to_tool_spec({"name": "empire", "parameters": {"type": "object", "properties": {
    "name": {"type": "string"}}, "required": ["name"]}})


def test_a_list_that_gives_two_arguments_is_not_fanned_out():
    call = {"name": "gcd", "arguments": {"a": 12, "b": 18}}
    assert _decoded("The GCD of 12, 18 and 30", GCD, [call]) == [call]


def test_a_listed_text_that_holds_a_used_value_is_that_value():
    """The model gave "Mauryan" a call of its own; "Mauryan Empire" is not a third one."""
    calls = [{"name": "empire", "arguments": {"name": n}} for n in ("Persian Empire", "Mauryan")]
    assert _decoded("Details of the Persian Empire and Mauryan Empire", EMPIRE, calls) == calls


def test_added_calls_stay_within_max_calls():
    calls = _decoded("Winning percentage of Lakers and Bulls in seasons 2018 and 2020", STANDINGS,
                     [{"name": "standing", "arguments": {"team": "Lakers", "season": 2018}}], max_calls=2)
    assert len(calls) == 2


def test_a_value_the_model_already_gave_a_call_is_not_added_again():
    first = {"name": "standing", "arguments": {"team": "Lakers", "season": 2018}}
    second = {"name": "standing", "arguments": {"team": "Bulls", "season": 2018}}
    calls = _decoded("Standing of Lakers and Bulls in 2018", STANDINGS, [first, second])
    assert calls == [first, second]


def test_rule_check_counts_added_and_rebuilt_answers():
    from training.rule_check import check_listed_values

    tool = {"name": "standing", "parameters": STANDINGS.parameters}
    one = {"messages": [{"role": "user", "content": "Standing of Lakers and Bulls in 2018"}], "tools": [tool],
           "calls": [{"name": "standing", "arguments": {"team": "Lakers", "season": 2018}}]}
    several = {**one, "calls": one["calls"] + [{"name": "standing", "arguments": {"team": "Bulls", "season": 2018}}]}
    counts = check_listed_values([one, several], progress=False)["counts"]
    assert counts == {"one call per tool": 1, "  a call added": 1, "one tool called several times": 1,
                      "  rebuilt from the first call": 1}


SHOP = to_tool_spec({"name": "shop", "parameters": {"type": "object", "properties": {
    "items": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    "floors": {"type": "array", "items": {"type": "integer"}}}}})


@pytest.mark.parametrize("request_text, given, completed", [
    ("Find a library with Fiction and Wi-Fi", {"items": ["Fiction"]}, {"items": ["Fiction", "Wi-Fi"]}),
    ("List the strengths and weaknesses", {"items": ["weaknesses"]}, {"items": ["strengths", "weaknesses"]}),
    ("Analyse floors 2, 3 and 4", {"floors": [2, 4]}, {"floors": [2, 3, 4]}),  # the text's order
    ("Buy chicken and broccoli and add them to a list", {"items": ["chicken", "broccoli"]},
     {"items": ["chicken", "broccoli"]}),  # "and add" starts a new phrase
    ("Buy apples, pears, plums and figs", {"items": ["apples"]}, {"items": ["apples"]}),  # over maxItems: left
])
def test_an_array_copied_from_a_list_gets_the_rest_of_the_list(request_text, given, completed):
    calls = _decoded(request_text, SHOP, [{"name": "shop", "arguments": given}])
    assert calls == [{"name": "shop", "arguments": completed}]


PARK = to_tool_spec({"name": "park", "parameters": {"type": "object", "properties": {
    "name": {"type": "string"},
    "information": {"type": "array", "items": {"type": "string", "enum": ["Elevation", "Area", "Location"]}}},
    "required": ["name", "information"]}})


@pytest.mark.parametrize("request_text, completed", [
    ("What's the elevation and area of Yellowstone?", ["Elevation", "Area"]),  # options said in a list
    ("What's the elevation of Yellowstone and its area?", ["Elevation"]),  # not one list
])
def test_an_array_of_options_gets_the_options_said_in_the_same_list(request_text, completed):
    calls = _decoded(request_text, PARK, [{"name": "park", "arguments": {"name": "Yellowstone",
                                                                         "information": ["Elevation"]}}])
    assert calls[0]["arguments"]["information"] == completed


STAFF = to_tool_spec({"name": "staff_info", "parameters": {"type": "object", "properties": {
    "ids": {"type": "string", "description": "Comma-separated staff IDs, e.g. '11,22'"},
    "domain": {"type": "string"}}, "required": ["ids"]}})


def test_a_list_for_a_comma_separated_string_is_joined_into_one_call():
    """The schema asks for the IDs in one string: one call, not a call per ID."""
    calls = _decoded("Short information for staff with IDs 12345, 67890 and 24680 in the de domain", STAFF,
                     [{"name": "staff_info", "arguments": {"ids": "67890", "domain": "de"}}])
    assert calls == [{"name": "staff_info", "arguments": {"ids": "12345,67890,24680", "domain": "de"}}]


def test_a_later_call_that_only_reuses_joined_values_is_dropped():
    first = {"name": "staff_info", "arguments": {"ids": "12345", "domain": "de"}}
    reshuffled = {"name": "staff_info", "arguments": {"ids": "12345", "domain": "24680"}}
    calls = _decoded("Short information for staff with IDs 12345, 67890 and 24680 in the de domain", STAFF,
                     [first, reshuffled])
    assert calls == [{"name": "staff_info", "arguments": {"ids": "12345,67890,24680", "domain": "de"}}]


@pytest.mark.parametrize("description, separator", [
    ("A comma-separated list of repositories, such as 'octocat/Hello-World,octo-org/octo-repo'.", ","),
    ('Recipients, separated by commas, e.g. "a@b.com, c@d.com"', ", "),
    ("Symbols, comma delimited", ","),
    ("A list of symbols", None),
])
def test_joined_list_separator_follows_the_descriptions_example(description, separator):
    from needle_core.decoding import joined_list_separator

    assert joined_list_separator({"type": "string", "description": description}) == separator
    assert joined_list_separator({"type": "array", "description": description}) is None
