"""Importers on the real recorded sets in ../shared/data (read-only), plus their parsing rules."""
import argparse
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from training.data import read_jsonl, validate_example
from training.importers import (
    IMPORTERS,
    DroidCallMapper,
    Reject,
    _alarm_days,
    _described_options,
    _first_turn,
    _literal,
    add_arguments,
    format_report,
    import_all,
    import_source,
    parse_api_request,
    run,
    type_to_schema,
    valid_tool_name,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")

# records read per file: enough to meet each format's cases, small enough for a quick suite
LIMITS = {"seal_tools": 60, "toolrl": 80, "glaive_demo": 60, "nestful": 40, "droidcall": None, "apibank_lv3": 150}


@pytest.fixture(scope="module")
def imported():
    return {s: import_source(s, DATA, limit=LIMITS[s], progress=False) for s in IMPORTERS}


@needs_data
@pytest.mark.parametrize("source", list(IMPORTERS))
def test_every_kept_example_validates(imported, source):
    examples, report = imported[source]
    assert report.kept == len(examples) > 0
    assert report.records > 0
    ids = [ex["id"] for ex in examples]
    assert len(set(ids)) == len(ids)
    for ex in examples:
        assert ex["source"] == source
        assert validate_example(ex) == [], ex["id"]


@needs_data
@pytest.mark.parametrize("source", list(IMPORTERS))
def test_rejections_are_counted_with_reasons(imported, source):
    _, report = imported[source]
    for reason, n in report.rejected.items():
        assert isinstance(reason, str) and reason.strip() and n > 0
        assert report.samples[reason], "each reason keeps a sample to read"
    assert report.as_dict()["rejected"] == dict(report.rejected)


@needs_data
def test_droidcall_rejects_by_reason(imported):
    # the full DroidCall run meets its known problems: invented contact URIs, intents without a function
    _, report = imported["droidcall"]
    assert report.rejected["intent has no api.jsonl function"] > 0
    assert report.rejected["contact URI invented (not in the request)"] > 0
    assert report.records == report.kept + sum(report.rejected.values())


@needs_data
def test_seal_tools_keeps_only_first_turn_calls():
    examples, report = import_source("seal_tools", DATA, limit=None, progress=False)
    assert report.notes["dependent calls left for a later turn"] > 0
    for ex in examples:
        assert "API_call_" not in json.dumps(ex["calls"])
    # dev-difficult-200: the third call needs the second's result, so only two are kept
    ex = next(e for e in examples if e["id"] == "seal_tools/dev/dev-difficult-200")
    assert [c["name"] for c in ex["calls"]] == ["getPlantingInstructions", "searchCrop"]
    assert "getAvailableResources" in {t["name"] for t in ex["tools"]}


@needs_data
def test_nestful_drops_references(imported):
    examples, report = imported["nestful"]
    assert report.notes["dependent calls left for a later turn"] > 0
    assert all("$var" not in json.dumps(ex["calls"]) for ex in examples)


@needs_data
def test_toolrl_multi_turn_and_names(imported):
    examples, report = imported["toolrl"]
    assert any(m["role"] == "tool" for ex in examples for m in ex["messages"])
    assert report.notes["tool names made valid (renamed everywhere)"] > 0
    assert any(not ex["calls"] for ex in examples) and any(len(ex["calls"]) > 1 for ex in examples)


@needs_data
def test_glaive_one_example_per_decision(imported):
    examples, _ = imported["glaive_demo"]
    assert any(ex["calls"] for ex in examples) and any(not ex["calls"] for ex in examples)
    # a decision right after a tool result exists, and its history holds the call it answers
    after_tool = [ex for ex in examples if ex["messages"][-1]["role"] == "tool"]
    assert after_tool and all(not ex["calls"] for ex in after_tool)


@needs_data
def test_apibank_history_and_duplicates(imported):
    examples, report = imported["apibank_lv3"]
    assert report.rejected["duplicate of an earlier example"] > 0  # lv3-api / lv3-response repeat lv3-train
    multi = [ex for ex in examples if any(m.get("tool_calls") for m in ex["messages"])]
    assert multi
    for ex in multi:
        assert ex["tools"][0]["name"] == "ToolSearcher"


@needs_data
def test_import_all_writes_jsonl_and_table(tmp_path, capsys):
    out = tmp_path / "all.jsonl"
    report = import_all(DATA, out, sources=["nestful", "glaive_demo"], limit=15, progress=False)
    rows = read_jsonl(out)
    assert len(rows) == report["total"]["kept"] == report["nestful"]["kept"] + report["glaive_demo"]["kept"]
    table = format_report(report)
    assert "nestful" in table and "glaive_demo" in table and "total" in table

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data-dir", str(DATA), "--out", str(tmp_path / "cli.jsonl"),
                              "--sources", "nestful", "--limit", "10", "--report", str(tmp_path / "r.json")])
    assert run(args) == 0
    assert "nestful" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["nestful"]["records"] == 30


def test_unknown_source_and_missing_dir(tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        import_source("nope", tmp_path)
    with pytest.raises(FileNotFoundError, match="data-dir"):
        import_source("toolrl", tmp_path)


# ---- parsing rules on small inputs -----------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("str", {"type": "string"}),
    ("int, optional", {"type": "integer"}),
    ("Number", {"type": "number"}),
    ("List[int]", {"type": "array", "items": {"type": "integer"}}),
    ("Optional[List[str]]", {"type": "array", "items": {"type": "string"}}),
    ("Dict[str, Any]", {"type": "object"}),
    ("Tuple[float, float]", {"type": "array", "items": {"type": "number"}}),
    ("Union[int, float]", {"type": "number"}),
    ("['string', 'null']", {"type": "string"}),
    ("list", {"type": "array", "items": {}}),
    ("Date (yyyy-mm-dd)", {"type": "string"}),
])
def test_type_to_schema(spec, expected):
    assert type_to_schema(spec) == expected


def test_type_to_schema_refuses_callables():
    with pytest.raises(ValueError, match="Callable"):
        type_to_schema("Callable[[float], float]")


def test_valid_tool_name():
    assert valid_tool_name("Search Managers") == "Search_Managers"
    assert valid_tool_name("3KS6Szt") == "_3KS6Szt"
    assert valid_tool_name("products/list") == "products_list"
    assert valid_tool_name("Events.FindEvents") == "Events.FindEvents"


def test_first_turn_keeps_literal_calls():
    pattern = re.compile(r"\$var_?\d+|API_call_\d+")
    calls = [("a", {"q": "x"}), ("b", {"id": "$var1.id$"}), ("c", {"v": ["API_call_0"]}), ("d", {})]
    assert [c["name"] for c in _first_turn(calls, pattern)] == ["a", "d"]
    with pytest.raises(Reject, match="earlier result"):
        _first_turn([("b", {"id": "5 * $var1.rate$"})], pattern)


def test_parse_api_request():
    assert parse_api_request("API-Request: [ToolSearcher(keywords='a b')]") == [("ToolSearcher", {"keywords": "a b"})]
    assert parse_api_request("[A(x=1, y=[1, 2]), B()]") == [("A", {"x": 1, "y": [1, 2]}), ("B", {})]
    notes = Counter()
    assert parse_api_request("[Find(location=New York, day=Monday)]", notes) == [
        ("Find", {"location": "New York", "day": "Monday"})]
    assert parse_api_request("[Get(code=ABC123)]", notes) == [("Get", {"code": "ABC123"})]
    assert notes["unquoted argument values read as strings"] == 3
    with pytest.raises(Reject, match="positional"):
        parse_api_request("[A('x')]")


def test_literal_repairs_recorded_results():
    assert _literal("{'a': 'the user's name'}") == {"a": "the user's name"}
    assert _literal("{'type': str, 'n': 1}") == {"type": "str", "n": 1}
    assert _literal("not python") == "not python"


def test_alarm_days_are_checked_against_the_request():
    assert _alarm_days([2, 4], "every Monday and Wednesday at 7") == ["Monday", "Wednesday"]
    assert _alarm_days([2, 3, 4, 5, 6], "on weekdays at 8") == ["Monday", "Tuesday", "Wednesday", "Thursday",
                                                                  "Friday"]
    assert len(_alarm_days([1, 2, 3, 4, 5, 6, 0], "every day at 9 PM")) == 7
    with pytest.raises(Reject, match="disagree"):
        _alarm_days([5], "every Friday at 5 PM")  # Calendar 5 is Thursday


@pytest.mark.parametrize("row, expected", [
    ({"intent": "ACTION_WIFI_SETTINGS", "query": "wifi?"}, ("open_settings", {"setting_type": "wifi"})),
    ({"intent": "ACTION_SET_TIMER", "query": "5 min", "extras": {"EXTRA_LENGTH": 330}},
     ("ACTION_SET_TIMER", {"duration": "5 minutes 30 seconds"})),
    ({"intent": "ACTION_VIEW", "uri": "geo:0,0?q=coffee+shop", "query": "coffee"},
     ("search_location", {"query": "coffee shop"})),
    ({"intent": "ACTION_DIAL", "uri": "tel:5551234", "query": "Dial 555-1234."},
     ("dial", {"phone_number": "555-1234"})),
    ({"intent": "ACTION_PICK", "mime": "CommonDataKinds.Phone.CONTENT_TYPE", "query": "pick a number"},
     ("ACTION_PICK", {"data_type": "PHONE"})),
    ({"intent": "ACTION_SENDTO", "uri": "mailto:a@b.com", "query": "mail a@b.com",
      "extras": {"Intent.EXTRA_SUBJECT": "Hi", "Intent.EXTRA_TEXT": "Hello"}},
     ("send_email", {"to": ["a@b.com"], "subject": "Hi", "body": "Hello"})),
])
def test_droidcall_mapping(row, expected):
    assert DroidCallMapper()(row) == expected


@pytest.mark.parametrize("row, reason", [
    ({"intent": "ACTION_RESERVE_TAXI_RESERVATION", "query": "taxi"}, "no api.jsonl function"),
    ({"intent": "ACTION_VIEW", "uri": "content://contacts/people/3", "query": "show Bob"}, "invented"),
    ({"intent": "ACTION_SEND", "uri": "sms:<friend_number>", "query": "text my friend",
      "extras": {"sms_body": "hi"}}, "placeholder"),
    ({"intent": "ACTION_INSERT", "query": "add party", "extras": {"TITLE": "Party", "DESCRIPTION": "x",
                                                                  "EXTRA_EVENT_BEGIN_TIME": 1698952800000}},
     "invented timestamp"),
])
def test_droidcall_rejections(row, reason):
    with pytest.raises(Reject, match=reason):
        DroidCallMapper()(row)


def test_described_options_become_enums():
    text = 'The type of settings screen.\nPossible values are:\n- "general": General (default)\n- "wifi": Wi-Fi'
    assert _described_options(text) == ["general", "wifi"]
    assert _described_options('The MIME type (e.g., "text/plain").') is None
