"""Schema-constrained decoding: the state machine that says which actions may come next.

For any scores whatsoever, the calls it produces are valid: every tool name is declared, every
key is a property of its object, keys come in schema order (so none twice) and never skip a
required one, values have the schema's type and respect enum, const, numeric bounds, string
length and pattern, and arrays respect minItems/maxItems. A tool whose required values cannot be
formed from the request (no number in it for a required integer, say) is never started, so
decoding never reaches a dead end. Output length is bounded: at most ``max_calls`` calls, arrays
of at most ``max_items`` items (or maxItems), spans of at most ``max_span`` tokens.

`CallDecoder` is driven step by step (`allowed` -> choose -> `step`) by the engine and by the
trainer (which replays target actions through it); `encode_calls` is the inverse used to build
training targets; `greedy_decode_batch` is the shared decoding loop.
"""
from __future__ import annotations

import copy
import datetime
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from needle_core.callformat import (END, END_LIST, FALSE, ITEMS, K_CALL, K_ITEM, K_KEY, K_SPAN_END, K_VALUE, LIST,
                                    MARK_USER, N_STRUCT, NULL, PT_TEXT, STOP, TRUE, Rendered, enum_options,
                                    primary_branch)
from needle_core.listed_values import complete_lists, fan_out, join_lists, listed_with, scalar_values
from needle_core.schema import name_words

_WORD_NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_WORD_NUMBERS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
                      "ninety": 90, "hundred": 100, "thousand": 1000, "million": 1_000_000, "dozen": 12,
                      "a dozen": 12, "half": 0.5, "a hundred": 100, "a thousand": 1000})
_ORDINAL_RE = re.compile(r"\d+(st|nd|rd|th)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?([eE][+-]?\d+)?|[+-]?\.\d+")


def parse_number(text: str) -> float | int | None:
    """A number spelled by a span: ``-5``, ``3.14``, ``1,000``, ``2e3``, an ordinal in digits
    (``19th``: one word piece, so no span can cut its suffix off), or a number word."""
    t = text.strip()
    if _ORDINAL_RE.fullmatch(t):
        return int(t[:-2])
    if _NUMBER_RE.fullmatch(t):
        clean = t.replace(",", "")
        try:
            return int(clean)
        except ValueError:
            value = float(clean)
            return value if math.isfinite(value) else None
    return _WORD_NUMBERS.get(t.lower())


_NUMBER_WORDS = frozenset(word for word in _WORD_NUMBERS if " " not in word)  # "two", not "a dozen"
_NUMBER_WORD_STARTS = frozenset(word.split()[0] for word in _WORD_NUMBERS)


def _may_start_number(token_text: str) -> bool:
    """Can a span starting with this token spell a number (`parse_number`)? A cheap test that
    spares parsing every span of the request."""
    t = token_text.strip()
    return t[:1].isdigit() or t[:1] in "+-." or t.lower() in _NUMBER_WORD_STARTS


_MONTHS = {name: i + 1 for i, names in enumerate((
    "january jan", "february feb", "march mar", "april apr", "may", "june jun", "july jul",
    "august aug", "september sep sept", "october oct", "november nov", "december dec")) for name in names.split()}
_MONTH = "(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_DATE_RES = [re.compile(rf"(?:the\s+)?{_DAY}(?:\s+of)?\s+{_MONTH},?\s+(?P<year>\d{{4}})", re.IGNORECASE),
             re.compile(rf"{_MONTH}\s+(?:the\s+)?{_DAY},?\s+(?P<year>\d{{4}})", re.IGNORECASE),
             re.compile(r"(?P<year>\d{4})(?P<sep>[-/.])(?P<month>\d{1,2})(?P=sep)(?P<day>\d{1,2})")]


def parse_date(text: str) -> datetime.date | None:
    """The calendar day a span names: with its month's name ("March 8th, 2023", "the 8th of
    March 2023", "8 Mar 2023") or year first ("2023-03-08", "2023/3/8"); None for anything else
    (no year, no such day, day-first numbers such as 03/04/2023, which could be either)."""
    for pattern in _DATE_RES:
        m = pattern.fullmatch(text.strip())
        if m:
            month = m["month"]
            try:
                return datetime.date(int(m["year"]), int(month) if month.isdigit() else _MONTHS[month.lower()],
                                     int(m["day"]))
            except ValueError:
                return None
    return None


# How a date parameter wants its days written. Measured on the recorded teacher answers whose
# request names a day: where the description spells a format (YYYY-MM-DD 119 of 119, DD/MM/YYYY
# as 20/05/2022), gives an ISO example ("e.g., 2022-10-15": 78 of 78) or just says "date" with no
# example (27 of 28), the teachers write the day in that form; where the example is itself
# spelled out ("e.g., January 1st, 2022": 6 of 6) or a time is wanted, they keep the words.
_FIELD = r"(y{2,4}|m{1,2}|d{1,2})"
_SPELLED_FORMAT = re.compile(rf"\b{_FIELD}([-/.]){_FIELD}\2{_FIELD}\b(?![T\s]*hh)", re.IGNORECASE)
_NAMED_FORMAT = re.compile(r"\b(year|month|day)([-/.])(year|month|day)\2(year|month|day)\b", re.IGNORECASE)  # "(month-day-year)"
_STRFTIME = {"yyyy": "%Y", "yyy": "%Y", "yy": "%y", "mm": "%m", "m": "%m", "dd": "%d", "d": "%d",
             "year": "%Y", "month": "%m", "day": "%d"}
_ISO_EXAMPLE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b(?!\s*T?\d{1,2}:)")
_MONTH_WORD = "(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_WORDS_DATE = re.compile(r"\bdates?\b", re.IGNORECASE)
_WANTS_WORDS_OR_TIME = re.compile(  # a spelled-out example day, or a time of day
    rf"\b{_MONTH_WORD}\s+\d|\d(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH_WORD}\b"
    r"|\btime|\bdatetime|\btimestamp|\bhh\b|\d:\d\d", re.IGNORECASE)


def date_format(node: dict) -> str | None:
    """The ``strftime`` form a string node asks days to be written in (see the measurements
    above), or None where a named day is copied as written."""
    if node.get("type") != "string":
        return None
    if node.get("format") == "date":
        return "%Y-%m-%d"
    return _described_date_format(node.get("description") or "")


@lru_cache(maxsize=4096)
def _described_date_format(description: str) -> str | None:
    spelled = _SPELLED_FORMAT.search(description) or _NAMED_FORMAT.search(description)
    if spelled:
        fields = [spelled[1].lower(), spelled[3].lower(), spelled[4].lower()]
        if sorted(f[0] for f in fields) != ["d", "m", "y"]:
            return None  # "MM/YYYY/MM": not a day
        return spelled[2].join(_STRFTIME[f] for f in fields)
    if _ISO_EXAMPLE.search(description):
        return "%Y-%m-%d"
    if _WORDS_DATE.search(description) and not _WANTS_WORDS_OR_TIME.search(description):
        return "%Y-%m-%d"
    return None


_ASKS_FRACTION = re.compile(
    r"\b(?:as|in) (?:a )?decimal\b|\bdecimal (?:form|format|fraction)\b|\bfraction\b|\bprobability\b"
    r"|\b0\.\d+\s*(?:for|is|=|means|represents)\s*(?:an? )?\d+(?:\.\d+)?\s*%|\be\.g\.?,?\s*0\.\d"
    r"|\d+(?:\.\d+)?\s*%\s*(?:is|=|as|would be represented as|becomes)\s*0\.\d+", re.IGNORECASE)
_PERCENT_AFTER = re.compile(r"\s*(?:%|percent\b)", re.IGNORECASE)


def asks_for_fraction(node: dict) -> bool:
    """A number node whose description asks for a rate as a decimal ("as a decimal", "0.05 for
    5%", "e.g. 0.95", a probability): "5%" is then 0.05. The recorded teachers write it so in
    12 of 13 such cases, and keep the percentage in 77 of 83 others."""
    return _described_as(_ASKS_FRACTION, node.get("description") or "")


_QUOTED_STRING = re.compile(r"(?<!\w)(['\"])([^'\"\n]{1,80}?)\1(?!\w)")
_SAID_NUMBER = re.compile(r"(?<![\w.^+-])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w^-])")
_LIST_LINK = re.compile(r",|;|\s(?:and|or|&)\s", re.IGNORECASE)
# Parameters named for where something comes from or goes to, and the words that lead into
# such a place in a request ("from San Francisco to London"); see `CallDecoder._direction_starts`.
_FROM_NAME_WORDS = frozenset({"from", "origin", "departure", "source", "src", "start", "base", "sender", "pickup"})
_TO_NAME_WORDS = frozenset({"to", "destination", "dest", "target", "arrival", "end", "recipient", "dropoff"})
# Quantities a numeric parameter's name can say, the units that mark a number as one of them,
# and the names; see `CallDecoder._unit_starts`.
_QUANTITY_UNITS = {
    "mass": r"kg|kgs|kilograms?|grams?|g|lbs?|pounds?|tons?|tonnes?|mg|milligrams?",
    "temperature": r"°\s?[CF]?|degrees?|celsius|fahrenheit|kelvin",
    "length": r"km|kilometers?|kilometres?|meters?|metres?|m|cm|centimeters?|mm|miles?|mi|ft|feet|foot|inch(?:es)?|yards?",
    "time": r"seconds?|secs?|s|minutes?|mins?|hours?|hrs?|h|days?|weeks?|months?|years?|yrs?",
}
_QUANTITY_NAME_WORDS = {
    "mass": {"mass", "weight"}, "temperature": {"temperature", "temp"},
    "length": {"distance", "height", "radius", "width", "depth", "diameter"},
    "time": {"time", "duration", "period", "seconds", "minutes", "hours", "days", "weeks", "months", "years"},
}
# Words of a numeric parameter's name that do not say what it counts; see `CallDecoder._counted_starts`.
_COUNT_NAME_WORDS = frozenset({"number", "total", "count", "maximum", "minimum", "amount", "value", "size"})
_NUMBER_THEN_WORD = re.compile(r"([-+]?\d[\d,]*(?:\.\d+)?|[A-Za-z]+)[\s-]+([A-Za-z]{4,})")
_NUMBER_THEN_UNIT = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?\s?(?:" + "|".join(
    f"(?P<{q}>{u})" for q, u in _QUANTITY_UNITS.items()) + r")(?![A-Za-z])", re.IGNORECASE)
# Words of a boolean parameter's name that say how it switches rather than what it switches on,
# and a negation shortly before what a request names; see `CallDecoder._named_plainly`.
_SWITCH_WORDS = frozenset({"include", "is", "has", "enable", "enabled", "use", "with", "show", "get", "allow", "only",
                           "should", "do", "does", "can", "flag", "need", "want", "the", "and", "for", "add", "apply",
                           "return"})
_NEGATED = re.compile(r"\b(?:without|no|not|\w+n['’]t|dont|exclude|excluding|never|skip|disable)\b(?:\W+\w+){0,2}\W*$",
                      re.IGNORECASE)
# A place written in parts joined by commas: a description that shows that form ("such as 'San
# Francisco, CA'", "in the format of 'City, State'") asks for that many parts; the request's run of
# capitalised parts ("Portland, OR", "2020 Addison Street, Berkeley, CA, USA").
_ASKED_FOR = r"\b(?:with|include|includes|including)\s+(?:(?:its|the|their|a|an|all|any|his|her)\s+)?"
_PLACE_PART = r"(?:street|address|city|town|state|country|province|region|location)(?:\s\(abbr\))?"
_PLACE_FORM = re.compile(rf"\b[A-Z][a-z]+(?:\s[A-Z][a-z]+)*,\s[A-Z]{{2}}\b|(?i:\b{_PLACE_PART}(?:,\s{_PLACE_PART})+\b)")
_CAPITAL_PART = r"(?:\d\w*\s)?[A-Z][\w'-]*(?:\s[A-Z][\w'-]*){0,3}"
_CAPITAL_PARTS = re.compile(rf"{_CAPITAL_PART}(?:,\s{_CAPITAL_PART})+")
_BRACKETED = re.compile(r"\[([^\[\]\n]{1,400})\]")
_BETWEEN_AND = re.compile(r"\bbetween\b[^.;!?]*\band\W*$", re.IGNORECASE)
_UNSAID_OPTIONS = frozenset({"all", "any", "none", "other", "yes", "no", "true", "false", "default"})
_WORD_BEFORE = re.compile(r"([A-Za-z]+)[\s\"'(\[]*$")
_SENTENCE_BREAK = re.compile(r"(?<![A-Z][a-z])(?<![A-Z][a-z]{2})(?<![A-Z])\B[a-z0-9][.!?]+\s+(?=[A-Z])")  # not "Dr. X", "Roe v. Wade", "U.S. Army"
_SENTENCE_ENDS = frozenset(".!?:;\n\"'(“")
_ASSIGNMENT = re.compile(r"(?<![\w.])([A-Za-z_][\w.]*)\s*[=:]\s*[\"'`]?(?=\S)")
_ASKS_JOINED_LIST = re.compile(r"\bcomma[- ](?:separated|delimited)\b|\bseparated by (?:a )?commas?\b", re.IGNORECASE)
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
# words that may stand between a parameter's name and its quoted value ("the title is 'X'")
_NAME_LINK = r"(?:\s+(?:is|as|of|to|called|named|saying|reading|titled))?"


def place_parts(node: dict) -> int:
    """How many comma-joined parts a string parameter's description shows a place written in
    ("'City, State'": 2, "such as 'San Francisco, CA'": 2, "'Street Address, City, State (abbr),
    Country'": 4); 0 where it shows none."""
    if node.get("type") != "string":
        return 0
    return _place_parts(node.get("description") or "")


@lru_cache(maxsize=4096)
def _place_parts(description: str) -> int:
    return max((m.group().count(",") + 1 for m in _PLACE_FORM.finditer(description)), default=0)


_ASKS_STATE_CODE = re.compile(r"\bstate (?:abbreviation|code)s?\b|\b(?:two|2)-letter (?:U\.?S\.? )?state\b", re.IGNORECASE)
# "San Francisco, CA" ending its example (not "q=Paris, US zip e.g: q=10001", a list of forms)
_CITY_STATE_EXAMPLE = re.compile(r"\b[A-Z][a-z]+(?:\s[A-Z][a-z]+)*,\s[A-Z]{2}\b(?=['\"’)\].,;]|\s*$)")


def city_with_state(text: str, node: dict, after: str = "") -> str:
    """``text`` with its state or country where ``node`` asks for a place as "City, ST" (its
    description shows such an example and a two-part form) and ``text`` is a US city of
    `us_city_states` alone ("Boston" -> "Boston, MA"), or as "'City, Country'" and ``text`` is a
    city elsewhere of `world_city_countries` ("Moscow" -> "Moscow, Russia"). The request holds the
    city, not its spelling in the asked form (as with dates); the state or country is knowledge a
    copying model does not have. A US city is written as the table does ("san jose" -> "San Jose,
    CA"); a state said by name is written as its code ("Berkeley, California" or "Austin texas" ->
    "Berkeley, CA", "Austin, TX"). Where the request goes on with a state or country (``after``:
    ", MN", ", Russia"), the span is cut short and nothing is added."""
    if not CITY_STATES or place_parts(node) != 2:
        return text
    description = node.get("description") or ""
    asks_state = _described_as(_CITY_STATE_EXAMPLE, description)
    asks_country = CITY_COUNTRIES and _asks_country_name(description)
    if not (asks_state or asks_country) or re.match(r",\s*[A-Z]{2}\b", after):
        return text
    said_next = re.sub(r"^,\s*", "", after)
    if _state_name().match(said_next) or _country_name().match(said_next):
        return text
    if asks_state:
        city = us_city_states().get(text.strip().casefold())
        if city:
            return f"{city[0]}, {city[1]}"
        said = _state_name_ending().search(text)
        if said:
            code = us_state_codes()[said.group(2).casefold()]
            city = us_city_states().get(text[:said.start()].strip().casefold())
            if city and city[1] == code:
                return f"{city[0]}, {code}"
            if said.group(1).strip() == ",":  # "Springfield, Illinois": the request names the state
                return f"{text[:said.start()].strip()}, {code}"
    if asks_country:
        city = world_city_countries().get(without_diacritics(text.strip()).casefold())  # "Lạng Sơn" too
        if city:
            return f"{city[0] if text.islower() else text.strip()}, {city[1]}"
    return text


# "'City, Country'" asked for by name; not where an example writes the country as a code ("such as
# 'London, UK'" or "'Paris, FR'": a different form, not built)
_CITY_COUNTRY_FORM = re.compile(r"\bCity, Country\b")
_PLACE_WITH_CODE = re.compile(r"['\"]([A-Z][\w .'-]*?),\s?[A-Z]{2}['\"]")


@lru_cache(maxsize=4096)
def _asks_country_name(description: str) -> bool:
    """The description names the form "City, Country" and writes no example's country as a code."""
    if not _CITY_COUNTRY_FORM.search(description):
        return False
    return not any(m.group(1).casefold() in world_city_countries() for m in _PLACE_WITH_CODE.finditer(description))


def state_code(text: str, node: dict) -> str:
    """``text``'s abbreviation where ``node`` asks for a US state's code ("the U.S. state
    abbreviation, such as 'CA' for California") and ``text`` names a state: "California" -> "CA"."""
    if not asks_state_code(node):
        return text
    return us_state_codes().get(text.strip().casefold(), text)


def asks_state_code(node: dict) -> bool:
    return STATE_CODES and node.get("type") == "string" and _described_as(_ASKS_STATE_CODE, node.get("description") or "")


@lru_cache(maxsize=1)
def _us_places() -> dict:
    """US city -> state abbreviation (the cities of 15,000 people or more whose name is not
    ambiguous) and state name -> abbreviation (GeoNames, CC BY 4.0; `scripts/build_place_tables.py`)."""
    return json.loads((Path(__file__).parent / "assets" / "us_cities.json").read_text())


@lru_cache(maxsize=1)
def us_city_states() -> dict[str, tuple[str, str]]:
    """Case-folded city name -> (the city's name, its state's abbreviation)."""
    return {name.casefold(): (name, state) for name, state in _us_places()["cities"].items()}


@lru_cache(maxsize=1)
def us_state_codes() -> dict[str, str]:
    """Case-folded state name -> abbreviation."""
    return {name.casefold(): code for name, code in _us_places()["states"].items()}


def without_diacritics(name: str) -> str:
    """"Lạng Sơn" -> "Lang Son" (combining marks dropped; đ, which has none, becomes d): the world
    table's names are written so, as requests in English write them."""
    decomposed = unicodedata.normalize("NFKD", name.replace("đ", "d").replace("Đ", "D"))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@lru_cache(maxsize=1)
def world_city_countries() -> dict[str, tuple[str, str]]:
    """Case-folded name of a city outside the US (100,000 people or more, name not ambiguous) ->
    (its name, its country's name) (GeoNames, CC BY 4.0; `scripts/build_place_tables.py`)."""
    table = json.loads((Path(__file__).parent / "assets" / "world_cities.json").read_text())
    return {name.casefold(): (name, table["countries"][code]) for name, code in table["cities"].items()}


def _alternation(names) -> str:
    """``names`` as one regex alternation, longest first ("West Virginia" before "Virginia")."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


def _state_names() -> str:
    """The US states' names as one regex alternation."""
    return _alternation(_us_places()["states"])


@lru_cache(maxsize=1)
def _state_name_ending() -> re.Pattern:
    """A US state's name ending a text, after a comma or a space ("Berkeley, California")."""
    return re.compile(r"(,\s*|\s+)(" + _state_names() + r")\s*$", re.IGNORECASE)


@lru_cache(maxsize=1)
def _country_name() -> re.Pattern:
    """A country's name of `world_city_countries`, as a whole word or words, in any case."""
    names = {country for _, country in world_city_countries().values()}
    return re.compile(r"(?:" + _alternation(names) + r")(?![\w-])", re.IGNORECASE)


@lru_cache(maxsize=1)
def _state_name() -> re.Pattern:
    """A US state's name, as a whole word or words, in any case."""
    return re.compile(r"(?:" + _state_names() + r")(?![\w-])", re.IGNORECASE)


def joined_list_separator(node: dict) -> str | None:
    """The separator of a text node whose description asks for several values in one string
    ("a comma-separated list of repositories, such as 'octocat/Hello-World,octo-org/octo-repo'"):
    the description's quoted example's (", " or ","), else ",". None for other nodes. The recorded
    teachers join the listed values so in 11 of the 14 answers to such parameters with a list."""
    description = node.get("description") or ""
    if node.get("type") != "string" or not _described_as(_ASKS_JOINED_LIST, description):
        return None
    for quoted in _QUOTED.finditer(description):
        example = re.search(r"\w,(\s?)\w", quoted.group(1) or quoted.group(2) or "")
        if example:
            return "," + example.group(1)
    return ","


@lru_cache(maxsize=4096)
def _described_as(pattern: re.Pattern, description: str) -> bool:
    """Remembered: span_value asks it of the same description for every span of the input."""
    return bool(pattern.search(description))


def _in_bounds(value: float, node: dict) -> bool:
    if "minimum" in node and value < node["minimum"]:
        return False
    if "maximum" in node and value > node["maximum"]:
        return False
    if "exclusiveMinimum" in node and value <= node["exclusiveMinimum"]:
        return False
    if "exclusiveMaximum" in node and value >= node["exclusiveMaximum"]:
        return False
    step = node.get("multipleOf")
    if step and abs(value / step - round(value / step)) > 1e-9:
        return False
    return True


def span_value(text: str, node: dict, after: str = "") -> tuple[bool, Any]:
    """(is the span text a valid value of this scalar node, the value); ``after`` is the text
    that follows the span ("5" before "%" is 0.05 where a decimal is asked for)."""
    t = node.get("type")
    if t in ("integer", "number"):
        num = parse_number(text)
        if num is None or isinstance(num, bool):
            return False, None
        if _PERCENT_AFTER.match(after) and asks_for_fraction(node):
            num = round(num / 100, 12)
        if t == "integer":
            if float(num) != int(num):
                return False, None
            num = int(num)
        return _in_bounds(num, node), num
    # strings and untyped values are copied as text; a day where a date form is asked for is
    # written in that form, a city where "City, ST" or "City, Country" is asked for with its state
    # or country (the only string conversions: the text holds the day or the city, not its
    # spelling in that form)
    form = date_format(node)
    if form:
        day = parse_date(text)
        text = day.strftime(form) if day else text
    else:
        text = state_code(city_with_state(text, node, after), node)
    if "minLength" in node and len(text) < node["minLength"]:
        return False, None
    if "maxLength" in node and len(text) > node["maxLength"]:
        return False, None
    pattern = node.get("pattern")
    if pattern and not re.search(pattern, text):
        return False, None
    return True, text


# ---- frames of the state machine -----------------------------------------------------------------
@dataclass
class _Calls:
    calls: list = field(default_factory=list)


@dataclass
class _Object:
    node: dict
    path: tuple
    tool: int
    keys: list  # property names in schema order
    required_idx: list  # indices of required keys, ascending
    free: bool  # free-form keys (spans) allowed
    value: dict = field(default_factory=dict)
    last: int = -1  # index of the last emitted key
    pending_key: Any = None  # the key whose value is being formed
    is_call: bool = False  # the arguments object of a call (not a nested value)


@dataclass
class _Array:
    node: dict  # the array schema
    path: tuple
    tool: int
    value: list = field(default_factory=list)
    starts: list = field(default_factory=list)  # span start of each item copied from the text


@dataclass
class _Value:
    node: dict  # schema of the value to form (may be a union)
    path: tuple
    tool: int
    optional: bool = False  # an optional argument: given only a span no other argument used


@dataclass
class _Span:
    node: dict  # scalar schema (primary branch)
    start: int
    as_key: bool = False  # a free-form object key rather than a value
    path: tuple = ()  # the value's path (its parameter's name is read by some rules)


_FREE_KEY = {"type": "string", "minLength": 1, "maxLength": 64}  # a free-form object key


class _LazySpans(dict):
    """Spans of an unconstrained string: every word-aligned start, ends computed when asked."""

    def __init__(self, decoder: "CallDecoder", starts: list[int]):
        super().__init__((s, None) for s in starts)
        self.decoder = decoder

    def __getitem__(self, start: int) -> list[int]:
        ends = super().__getitem__(start)
        if ends is None:
            # a start is only offered with an end: when the rules leave none (an opening quote
            # glued to its word, an identifier longer than max_span), the plain word ends, or the
            # start token alone, which any string accepts
            ends = (self.decoder.text_ends(start, self.decoder.max_span)
                    or self.decoder.word_ends(start, self.decoder.max_span) or [start])
            super().__setitem__(start, ends)
        return ends

    def get(self, start, default=None):
        return self[start] if start in self else default

    def items(self):
        return ((s, self[s]) for s in list(self.keys()))


class DecodeError(ValueError):
    """An action was not allowed, or targets cannot be encoded."""


class CallDecoder:
    """Step-by-step constrained decoder over the actions of `needle_core.callformat`."""

    def __init__(self, rendered: Rendered, specs: list, tool_choice: str = "auto", max_calls: int = 8,
                 max_items: int = 16, max_span: int = 48):
        self.r = rendered
        self.specs = [specs[i] for i in rendered.kept_tools] if rendered.kept_tools else list(specs)
        if len(self.specs) != len(rendered.tool_pos):
            raise ValueError("rendered tools do not match the specs")
        self.tool_choice = tool_choice
        self.max_calls, self.max_items, self.max_span = max_calls, max_items, max_span
        self.L = len(rendered.ids)
        self.text_pos = np.array([i for i, t in enumerate(rendered.pos_type) if t == PT_TEXT], dtype=np.int64)
        self._valid_spans_cache: dict = {}
        self._feasible_cache: dict[int, bool] = {}
        self.tool_of_pos = {p: i for i, p in enumerate(rendered.tool_pos)}
        self.named = None
        self._latest: tuple | None = None  # see _latest_tokens
        self._latest_segment: tuple[int | None] | None = None  # see _latest_request
        self._assignments: dict[str, set[int]] | None = None  # see _named_starts
        self._quoted_names: dict[tuple, set[int]] = {}  # see _quoted_after_name
        self._quote_starts: list[tuple[int, int, str]] | None = None  # see _quoted_after_name
        self._days: dict[int, list[int]] | None = None  # see _day_spans
        self._quoted: list[tuple[int, set[int]]] | None = None  # see _quotes
        self._places: list[tuple[int, list[int]]] | None = None  # see _place_runs
        self._bracketed: list[list[int]] | None = None  # see _brackets
        self._lists_of_numbers: list[list[set[int]]] | None = None  # see _number_lists
        self._count_nouns_of: dict[int, dict[str, list[str]]] = {}  # see _count_nouns
        self._day_nodes = _day_parameter_nodes(self.specs) if DAY_WORDS else frozenset()
        if tool_choice not in ("auto", "required", "any", "none"):
            names = [s.name for s in self.specs]
            if tool_choice not in names:
                raise ValueError(f"tool_choice {tool_choice!r} is not among the tools: {', '.join(names)}")
            self.named = names.index(tool_choice)
        self.stack: list = [_Calls()]
        self.call_starts: dict[tuple, set[int]] = {}  # (tool, path) -> span starts, current call
        self.call_text_starts: set[int] = set()  # span starts copied into text values, current call
        self.call_anchors: dict[str, tuple[int, int, dict]] = {}  # top-level key -> copied span, current call
        self.call_item_anchors: dict[str, list[tuple[int, int, dict]]] = {}  # top-level array -> copied items
        self.anchors: list[tuple[dict, dict]] = []  # the two, per completed call
        self.earlier_starts: dict[tuple, set[int]] = {}  # the same, over the calls already made
        self.covered: list[set[int]] = []  # token positions copied into each completed call
        self.call_covered: set[int] = set()  # the same, current call
        self.fresh_taken: list[set[int]] = []  # per completed call: unused numbers and parallel values it took (none where a span went to two arguments)
        self.call_fresh_taken: set[int] = set()  # the same, current call
        self._said_numbers: list[tuple[int, str, float]] | None = None  # see unused_numbers
        self.fresh_numbers: set[int] | None = None  # numbers the call being formed is for (UNUSED_NUMBERS)
        self.fresh_texts: dict[tuple, set[int]] | None = None  # (tool, path) -> parallel values it is for (PARALLEL_VALUES)
        self._given: tuple[int, set] | None = None  # see _values_given
        self.steps = 0
        self.done = False
        self._allowed = None

    # -- feasibility: can this node be given a valid value from this input? --
    def valid_spans(self, node: dict) -> dict[int, list[int]]:
        """start position -> end positions of the spans that are valid values of a scalar node."""
        numeric = node.get("type") in ("integer", "number")
        plain = not numeric and not any(k in node for k in ("minLength", "maxLength", "pattern"))
        day = id(node) in self._day_nodes  # see DAY_WORDS
        key = ("day" if day else "plain") if plain else id(node)
        cached = self._valid_spans_cache.get(key)
        if cached is not None:
            return cached
        out: dict[int, list[int]] = {}
        if numeric:  # filter the request's number spans, found once per request
            for s, e, text in self._number_spans():
                if span_value(text, node, self.r.text_after(e))[0]:
                    out.setdefault(s, []).append(e)
        elif plain:  # any word-aligned span: ends are listed lazily, per start
            out = _LazySpans(self, [int(p) for p in self.text_pos if self.r.word_start[p] and not self._no_text_start(p)
                                    and (not day or self._starts_a_day(p))])
        else:
            for start in self.text_pos:
                if self._no_text_start(start) or (day and not self._starts_a_day(start)):
                    continue
                for e in self.text_ends(int(start), self.max_span):
                    if span_value(self.r.span_text(int(start), e), node)[0]:
                        out.setdefault(int(start), []).append(e)
        self._valid_spans_cache[key] = out
        return out

    def _starts_a_day(self, p: int) -> bool:
        """Can a day start at text position ``p``: a digit, a month or weekday name, or a word
        such as "today" or "next" (`DAY_WORDS`)?"""
        word = self.first_word(p).lower()
        return word[:1].isdigit() or word.rstrip(".") in _MONTHS or word in _DAY_START_WORDS

    def _no_text_start(self, p: int) -> bool:
        """A lower-case "the" starts no text value: the recorded teachers write "Louvre Museum" for
        "the Louvre Museum" (1,266 values after a lower-case "the", 2 that keep it), while "The
        Office" keeps its capital article as part of the name. Nor does a cut into an identifier
        (`_splits_identifier`) or a place inside a quoted string (`_inside_quote`), nor a lower-case
        number word ("five" of "five 'burgers'": 2 of the teachers' 15,638 text values start with
        one, "one week", `runs/s15/word_number_text.py`)."""
        word = self.first_word(p)
        return (word == "the" or _is_number_word(word) or self._splits_identifier(p, start=True)
                or self._inside_quote(p) or self._splits_clock(p, start=True))

    def _splits_clock(self, p: int, start: bool) -> bool:
        """Would a text span starting (or ending) at token ``p`` cut digits joined by a colon, a
        time of day or a ratio ("17:15", "16:9")? The recorded teachers copy 85 text values that
        hold such digits and cut none. Numbers may ("3:15" gives hours 3 and minutes 15), so this
        binds text values only."""
        if not CLOCK_TIMES:
            return False
        edge, across, beyond = self._around_cut(p, start)
        return across == ":" and edge.isdigit() and beyond.isdigit()

    def _around_cut(self, p: int, start: bool) -> tuple[str, str, str]:
        """For a span starting (or ending) at token ``p``: (its first (last) character, the one
        across the cut, the one beyond that)."""
        text, (a, b) = self.r.segments[self.r.segment[p]], self.r.offsets[p]
        if start:
            return text[a:a + 1], text[a - 1:a] if a else "", text[a - 2:a - 1] if a > 1 else ""
        return text[b - 1:b], text[b:b + 1], text[b + 1:b + 2]

    def _splits_identifier(self, p: int, start: bool) -> bool:
        """Would a span starting (or ending) at token ``p`` cut an identifier: at an underscore
        ("wjeiruhuq_roar"), at a dot between letters or digits ("microsoft.windows" of
        "microsoft.windows.camera"), or with a punctuation mark glued to a letter or digit across
        the cut ("microsoft.windows.")? Of the 9,607 text values that the recorded teachers copied
        from the conversation, none does the first or the last, 2 the second (a missing space in
        "Los Angeles.Lastly", "mp4" of "file.mp4")."""
        a, b = self.r.offsets[p]
        token = self.r.segments[self.r.segment[p]][a:b]
        edge, across, beyond = self._around_cut(p, start)
        if token == "_" or across == "_":
            return True
        if across == "." and beyond.isalnum() and edge.isalnum():
            return True
        return across.isalnum() and not any(ch.isalnum() for ch in token)

    def first_word(self, p: int) -> str:
        """The word that starts at text position ``p``, up to a space or punctuation: "namespace",
        not its piece "names"; "resource-456", not "resource"."""
        start = self.r.offsets[p][0]
        word = re.match(r"[^\s,.;:!?()\"']*", self.r.segments[self.r.segment[p]][start:start + 64])
        return word.group() if word else ""

    def word_ends(self, s: int, limit: int) -> list[int]:
        """Ends of the spans from ``s`` inside one segment that do not cut a word (at most ``limit`` tokens)."""
        r = self.r
        if not r.word_start[s]:
            return []
        ends = []
        for e in range(s, min(s + limit, self.L)):
            if r.segment[e] != r.segment[s]:
                break
            if e + 1 < self.L and r.segment[e + 1] == r.segment[s] and not r.word_start[e + 1]:
                continue
            if self._splits_identifier(e, start=False):
                continue
            ends.append(e)
        return ends

    def text_ends(self, s: int, limit: int) -> list[int]:
        """`word_ends` of a text value: a span that starts a quoted string of the latest request
        ends where the quote does (or before its final "."), and no other span reaches into one;
        a quote that may hold a list (a comma, "and", "or") is left free. Recorded teachers: of the
        values that overlap a quoted string, 2,628 are the whole quote, 13 a part of it (7 of them
        the quote without its final period). Nor does a text value end inside a time ("17" of
        "17:15", `_splits_clock`) or with the article "the" or "an" ("The" of "at The Plaza hotel";
        none of the teachers' 14,339 text values does)."""
        ends = [e for e in self.word_ends(s, limit) if not self._splits_clock(e, start=False) and not self._is_article(e)]
        if SENTENCE_SPANS and ends and (cut := self._next_sentence(s)) is not None:
            ends = [e for e in ends if self.r.offsets[e][0] < cut] or ends
        if not QUOTED_WHOLE:
            return ends
        for first, lasts in self._quotes():
            if s == first:
                return [e for e in ends if e in lasts] or ends
            if s < first:
                ends = [e for e in ends if e < first]
        return ends

    def _next_sentence(self, s: int) -> int | None:
        """Where the next sentence after token ``s`` starts (a character of its segment), for a
        ``s`` that starts no sentence (nor a quote, a line, a bracket); None otherwise. A text
        value that starts inside a sentence ends in it: of the recorded teachers' 9,693 copied
        values, 17 reach into a next sentence, all "Dr. Smith" or whole quoted messages that start
        one; greedy decoding gave "location": "movie. Just a regular showing of a Supernatural"."""
        text = self.r.segments[self.r.segment[s]]
        at = self.r.offsets[s][0]
        before = text[:at].rstrip()
        if not before or before[-1] in _SENTENCE_ENDS:
            return None
        m = _SENTENCE_BREAK.search(text, at)
        return m.end() if m else None

    def _is_article(self, p: int) -> bool:
        """Is token ``p`` the whole word "the" or "an" (no text value ends with one)?"""
        return ARTICLE_ENDS and bool(self.r.word_start[p]) and self.r.span_text(p, p).strip().lower() in ("the", "an")

    def _inside_quote(self, p: int) -> bool:
        """Is token ``p`` inside a quoted string (or its opening quote mark) other than its first word?"""
        return QUOTED_WHOLE and any(first - 1 <= p <= max(lasts) and p != first for first, lasts in self._quotes())

    def _latest_tokens(self) -> tuple[str, dict[int, int], dict[int, int]]:
        """(text of the latest request, its tokens by first character, by end character); empty
        when the conversation has no user message. Computed once: several rules read it."""
        if self._latest is None:
            latest = self._latest_request()
            if latest is None:
                self._latest = ("", {}, {})
            else:
                tokens = [int(p) for p in self.text_pos if self.r.segment[p] == latest]
                self._latest = (self.r.segments[latest], {self.r.offsets[p][0]: p for p in tokens},
                                {self.r.offsets[p][1]: p for p in tokens})
        return self._latest

    def _quotes(self) -> list[tuple[int, set[int]]]:
        """(first token, possible last tokens) of each quoted string of the latest request."""
        if self._quoted is None:
            self._quoted = []
            text, first_at, last_at = self._latest_tokens()
            for m in _QUOTED_STRING.finditer(text):
                if _LIST_LINK.search(m.group(2)):
                    continue  # "IDs 'A1 and B2'": the quote may hold a list of values
                a, b = m.span(2)
                ends = {b, b - 1} if text[b - 1] == "." else {b}  # with or without a final period
                lasts = {last_at[end] for end in ends if end in last_at}
                if a in first_at and lasts:
                    self._quoted.append((first_at[a], lasts))
        return self._quoted

    def unit_cuts(self, s: int, limit: int) -> list[int]:
        """Span ends from ``s`` where digits meet a unit glued to them: "6cm", "100µF", "12.5km/h"
        hold 6, 100 and 12.5, which word-aligned spans cannot give. Never inside the digits of
        one number ("1,000", "3.5", a number split into several tokens)."""
        r = self.r
        if not r.word_start[s]:
            return []
        cuts = []
        for e in range(s, min(s + limit, self.L - 1)):
            if r.segment[e + 1] != r.segment[s]:
                break
            if r.word_start[e + 1]:
                continue  # a word end: word_ends has it
            after = r.span_text(e + 1, e + 1)[:1]
            if r.span_text(s, e)[-1:].isdigit() and after and not after.isdigit() and after not in ".,":
                cuts.append(e)
        return cuts

    def _day_spans(self) -> dict[int, list[int]]:
        """start -> ends of the spans that name a whole day (`parse_date`: "July 10, 2022",
        "2022/08/16"). A parameter that asks for days in a written form takes one of these when
        the conversation has any: "2022" alone from "July 10, 2022" is no day. In the recorded
        teacher answers to such parameters 410 of 441 values are a day in that form (the rest
        are ranges, times or "last month" where the request names no whole day)."""
        if self._days is None:
            self._days = {}
            for s in map(int, self.text_pos):
                first = self.r.span_text(s, s).lower()
                if not self.r.word_start[s] or not (first[:1].isdigit() or first in _MONTHS or first == "the"):
                    continue
                for e in self.word_ends(s, 10):
                    if parse_date(self.r.span_text(s, e)):
                        self._days.setdefault(s, []).append(e)
        return self._days

    def _number_spans(self) -> list[tuple[int, int, str]]:
        cached = self._valid_spans_cache.get("numbers")
        if cached is None:
            starts = [int(s) for s in self.text_pos if _may_start_number(self.r.span_text(int(s), int(s)))]
            cached = [(s, e, text) for s in starts for e in sorted(self.unit_cuts(s, 8) + self.word_ends(s, 8))
                      if parse_number(text := self.r.span_text(s, e)) is not None]
            self._valid_spans_cache["numbers"] = cached
        return cached

    def feasible(self, node: dict) -> bool:
        key = id(node)
        if key not in self._feasible_cache:
            self._feasible_cache[key] = True  # schemas are acyclic; guard anyway
            self._feasible_cache[key] = self._feasible(node)
        return self._feasible_cache[key]

    def _feasible(self, node: dict) -> bool:
        inner, nullable = primary_branch(node)
        if nullable or enum_options(inner):
            return True
        t = inner.get("type")
        if t in (None, "boolean", "null"):
            return True
        if t == "array":
            need = inner.get("minItems", 0)
            if need == 0 and not ARRAYS_NEED_AN_ITEM:
                return True
            return need <= self._array_cap(inner) and self.feasible(inner.get("items", {}))
        if t == "object":
            props = inner.get("properties", {})
            if OBJECTS_NEED_A_KEY and props and not inner.get("required"):
                return any(self.feasible(v) for v in props.values())
            return self._required_feasible(inner)
        return bool(self.valid_spans(inner))

    def _required_feasible(self, node: dict) -> bool:
        """Each required property of an object node can be formed."""
        props = node.get("properties", {})
        return all(self.feasible(props[k]) for k in node.get("required", []))

    def _array_cap(self, node: dict) -> int:
        return max(min(node.get("maxItems", self.max_items), self.max_items), node.get("minItems", 0))

    def tool_feasible(self, i: int) -> bool:
        """A call can be made: each required argument can be formed (a call may give no argument,
        unlike an object inside one, see `OBJECTS_NEED_A_KEY`)."""
        return self._required_feasible(self.specs[i].parameters)

    # -- what may come next --
    @property
    def kind(self) -> int:
        top = self.stack[-1]
        if isinstance(top, _Calls):
            return K_CALL
        if isinstance(top, _Object):
            return K_VALUE if top.pending_key is not None else K_KEY
        if isinstance(top, _Array):
            return K_ITEM
        if isinstance(top, _Span):
            return K_SPAN_END
        return K_VALUE

    def allowed(self) -> tuple[np.ndarray, np.ndarray]:
        """(structural mask [N_STRUCT], position mask [L]) of the actions allowed now."""
        if self._allowed is None or self._allowed[0] != self.steps:
            self._allowed = (self.steps, self._compute_allowed())
        return self._allowed[1]

    def _compute_allowed(self) -> tuple[np.ndarray, np.ndarray]:
        struct = np.zeros(N_STRUCT, dtype=bool)
        pos = np.zeros(self.L, dtype=bool)
        if self.done:
            return struct, pos
        top = self.stack[-1]
        if isinstance(top, _Calls):
            n = len(top.calls)
            must_call = (self.tool_choice in ("required", "any") or self.named is not None) and n == 0
            if self.tool_choice != "none" and n < self.max_calls:
                for i, p in enumerate(self.r.tool_pos):
                    if (self.named is None or i == self.named) and self.tool_feasible(i):
                        pos[p] = True
            if not must_call or not pos.any():
                struct[STOP] = True
        elif isinstance(top, _Object):
            if top.pending_key is not None:
                self._value_first(self._free_value_node(top), top.path + ("*",), top.tool, struct, pos)
            else:
                self._object_keys(top, struct, pos)
        elif isinstance(top, _Array):
            items = top.node.get("items", {})
            if len(top.value) < self._array_cap(top.node) and self.feasible(items):
                self._value_first(items, top.path + (ITEMS,), top.tool, struct, pos)
            # a given array of plain values has an item where one can be formed: the recorded
            # teachers give no empty array (825 arrays, none empty), greedy decoding gives [] for
            # "vector B [1, 2, 3]" (arrays of objects are left free: an item there may be {})
            scalar_items = primary_branch(items)[0].get("type") not in ("object", "array")
            if len(top.value) >= top.node.get("minItems", 0) and (
                    top.value or not (NONEMPTY_ARRAYS and scalar_items) or not (struct.any() or pos.any())):
                struct[END_LIST] = True
            if BRACKET_LISTS and top.starts and len(top.starts) == len(top.value):
                self._follow_bracket(top, struct, pos)
        elif isinstance(top, _Span):
            spans = self._key_spans() if top.as_key else self.valid_spans(top.node)
            ends = spans.get(top.start, [])
            if DATE_SPANS and not top.as_key and date_format(top.node):
                days = self._day_spans().get(top.start, ())
                ends = [e for e in ends if e in days] or ends
            if OWN_NAME_ENDS and not top.as_key and top.node.get("type") == "string":
                ends = self._without_own_name_end(top.start, ends, top.path) or ends
            if PLACE_FORMS and not top.as_key and (parts := place_parts(top.node)) > 1:
                ends = self._place_ends(top.start, ends, parts) or ends
            pos[ends] = True
        elif isinstance(top, _Value):
            self._value_first(top.node, top.path, top.tool, struct, pos, fresh=top.optional)
        return struct, pos

    def _follow_bracket(self, array: _Array, struct: np.ndarray, pos: np.ndarray) -> None:
        """An array whose items so far are the first elements of a bracketed list of the latest
        request ("[12, 15, 18, 20]") goes on with its next element and ends after its last. The
        recorded teachers copy such a list whole, in order, in 24 of 25 arrays that start with its
        first element (the other joins two lists); greedy decoding skips or mixes elements."""
        for elements in self._brackets():
            k = len(array.starts)
            if elements[:k] != array.starts:
                continue
            if k == len(elements):
                if struct[END_LIST]:
                    struct[:], pos[:] = False, False
                    struct[END_LIST] = True
            elif pos[elements[k]]:
                struct[:], pos[:] = False, False
                pos[elements[k]] = True
            return

    def _brackets(self) -> list[list[int]]:
        """The first token of each element of each bracketed list of two or more elements in the
        latest request ("[10, 15, 12]", "['A of spades', 'K of spades']")."""
        if self._bracketed is None:
            self._bracketed = []
            text, first_at, _ = self._latest_tokens()
            for m in _BRACKETED.finditer(text):
                starts, at = [], m.start(1)
                for element in m.group(1).split(","):
                    lead = len(element) - len(element.lstrip(" '\""))
                    starts.append(first_at.get(at + lead))
                    at += len(element) + 1
                if len(starts) > 1 and None not in starts:
                    self._bracketed.append(starts)
        return self._bracketed

    def _object_keys(self, obj: _Object, struct, pos) -> None:
        props = obj.node.get("properties", {})
        next_required = next((j for j in obj.required_idx if j > obj.last), None)
        if obj.is_call:  # an optional argument the request asks for is taken before the call ends
            said = ([self._said_day_key(obj)] if SAID_DAYS else []) + ([self._said_switch_key(obj)] if SAID_SWITCHES else [])
            for said_key in said:
                if said_key is not None and (next_required is None or said_key < next_required):
                    next_required = said_key
        if next_required is None:
            struct[END] = True
        stop_at = next_required if next_required is not None else len(obj.keys) - 1
        for j in range(obj.last + 1, stop_at + 1):
            key = obj.keys[j]
            p = self.r.param_pos.get((obj.tool, obj.path + (key,)))
            if p is not None and self.feasible(props[key]) and (j in obj.required_idx or self._fresh_value_left(props[key])):
                pos[p] = True
        if obj.free and next_required is None and len(obj.value) < self.max_items:
            for s in self._key_spans():
                pos[s] = True
        if OBJECTS_NEED_A_KEY and not obj.is_call and not obj.value and pos.any():
            struct[END] = False  # see OBJECTS_NEED_A_KEY

    def _said_day_key(self, obj: _Object) -> int | None:
        """The index of the next optional parameter of the call that asks for a day (`date_format`)
        while the latest request names a whole day no argument of the call took: that day is its
        value, so the call does not end without it. Recorded teachers give such a parameter in 9
        of 9 one-call answers and 47 of 63 over all (the other 16: the day belongs to another call)."""
        days = self._day_spans()
        if not days:
            return None
        latest = self._latest_request()
        used = self.used_starts
        if not any(self.r.segment[s] == latest and s not in used for s in days):
            return None
        return self._next_optional_key(obj, lambda key, node: bool(date_format(primary_branch(node)[0]))
                                       and self.feasible(node) and self._fresh_value_left(node))

    def _said_switch_key(self, obj: _Object) -> int | None:
        """The index of the next optional boolean parameter of the call that the latest request
        asks for right after "with" or "include" ("with verdict" for ``with_verdict``, "including
        its opponent name" for ``include_opponent``): the call does not end without it (true, by
        `_named_plainly`). Recorded teachers give such a parameter in 6 of 9 answers (2 of 2 with
        one call; the 3 left out are in three-call Seal-Tools answers, `runs/s15/with_switch.py`)."""
        return self._next_optional_key(obj, lambda key, node: node.get("type") == "boolean"
                                       and self._named_plainly(obj.path + (key,), asked=True))

    def _next_optional_key(self, obj: _Object, wanted: Callable[[str, dict], bool]) -> int | None:
        """The index of the first optional parameter after the object's last key that can be
        given here and that ``wanted(name, schema)`` picks (`_said_day_key`, `_said_switch_key`)."""
        props = obj.node.get("properties", {})
        for j in range(obj.last + 1, len(obj.keys)):
            key = obj.keys[j]
            node = props[key]
            if (j not in obj.required_idx and isinstance(node, dict)
                    and (obj.tool, obj.path + (key,)) in self.r.param_pos and wanted(key, node)):
                return j
        return None

    def _key_spans(self) -> dict:
        return self.valid_spans(_FREE_KEY)

    def _free_value_node(self, obj: _Object) -> dict:
        extra = obj.node.get("additionalProperties", True)
        return extra if isinstance(extra, dict) else {}

    def _fresh_value_left(self, node: dict) -> bool:
        """Can an optional argument of ``node`` still be given a value? A copied one only from a
        span that no argument of the call started at: the recorded teachers give an optional
        argument another argument's value in 24 of 4,147 cases (0.6%), while greedy decoding
        fills one with an already used number ("n": 3 beside "rate": 3) when the request has none
        left for it."""
        if not FRESH_OPTIONAL_VALUES:
            return True
        inner, nullable = primary_branch(node)
        if nullable or enum_options(inner) is not None or inner.get("type") not in ("string", "integer", "number"):
            return True
        used = self.used_starts
        return any(s not in used for s in self.valid_spans(inner))

    def _value_first(self, node: dict, path: tuple, tool: int, struct, pos, fresh: bool = False) -> None:
        """Mark the first actions that can start a value of ``node`` (``fresh``: only at span
        starts no argument of the call used, see `_fresh_value_left`)."""
        inner, nullable = primary_branch(node)
        if nullable:
            struct[NULL] = True
        options = enum_options(inner)
        if options is not None:
            choices = self.r.option_pos.get((tool, path), [])
            if SAID_OPTIONS and ITEMS not in path:
                choices = self._said_option(choices) or choices
            for p, _ in choices:
                pos[p] = True
            return
        t = inner.get("type")
        if t in ("boolean", None):
            struct[TRUE] = True
            struct[FALSE] = not (NAMED_BOOLEANS and t == "boolean" and self._named_plainly(path))
        if t is None:
            struct[NULL] = True
        if t == "array" and self.feasible(inner):
            struct[LIST] = True
        elif t == "object" and self.feasible(inner):
            obj = self._new_object(inner, path, tool)
            self._object_keys(obj, struct, pos)
        elif t in ("string", "integer", "number", None):
            starts = list(self.valid_spans(inner))
            if fresh:
                used = self.used_starts
                starts = [p for p in starts if p not in used]
            elif FRESH_ITEMS and path and path[-1] == ITEMS:  # see FRESH_ITEMS
                used = self.used_starts
                starts = [p for p in starts if p not in used] or starts
            if DISTINCT_TEXT_SPANS and t == "string":
                starts = [p for p in starts if p not in self.call_text_starts] or starts
            if DATE_SPANS and date_format(inner):
                days = self._day_spans()
                starts = [p for p in starts if p in days] or starts
            if DIRECTION_WORDS:
                starts = self._direction_starts(starts, path) or starts
            named = self._named_starts(starts, path) if NAMED_VALUES else []
            if t != "integer" and t != "number":  # "query: query home tips" gives "home tips"
                named = self._without_own_name(named, path)
                if QUOTED_NAMES and not named:
                    named = self._quoted_after_name(starts, path)
                starts = named or self._without_own_name(starts, path) or starts
                if CAPITAL_THE and not named:
                    starts = [p for p in starts if not self._after_capital_the(p)] or starts
                if PLACE_FORMS and not named and place_parts(inner) > 1:
                    starts = self._place_starts(starts) or starts
                if not named and asks_state_code(inner):  # a state's code: start at a state's name
                    starts = [p for p in starts if self._starts_state_name(p)] or starts
                if self.fresh_texts and (parallel := self.fresh_texts.get((tool, path))):  # see PARALLEL_VALUES
                    starts = [p for p in starts if p in parallel] or starts
            else:
                if UNIT_QUANTITIES and not named:
                    starts = self._unit_starts(starts, path) or starts
                if SIBLING_ORDER and not named and len(path) == 1:
                    starts = self._sibling_starts(starts, path[0], tool) or starts
                if COUNTED_NOUNS and not named and len(path) == 1:
                    starts = self._counted_starts(starts, path[0], tool) or starts
                starts = named or starts
                if self.fresh_numbers is not None:  # see UNUSED_NUMBERS: a new number or the earlier one
                    again = set() if self._last_chance_for_fresh(path) else self.earlier_starts.get((tool, path), set())
                    starts = [p for p in starts if p in self.fresh_numbers or p in again] or starts
            pos[starts] = True

    def _said_option(self, choices: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        """The one option that the latest request says as a whole word ("a Theater event" for
        ["Music", "Theater"], "from 2018" for ["2018", "2019"]), as a one-item list; [] when it
        says none or several. Options of one or two characters and words such as "all", "any" or
        "none" do not count: requests say them for other reasons. Recorded teachers, for an enum
        parameter with one option said: that option 867 times, another 70, all 70 of one DroidCall
        tool whose options are common words ("wireless" for "Bluetooth", "wifi" for "display the
        Wi-Fi information"): the model has learnt that tool, and this rule overrules it there (2
        held-out requests), while on unseen tools it picks options the request does not say."""
        latest = self._latest_request()
        if latest is None:
            return []
        text = self.r.segments[latest].replace("_", " ")
        said = [(p, option) for p, option in choices
                if isinstance(option, str) and len(option) > 2 and option.casefold() not in _UNSAID_OPTIONS
                and re.search(r"(?<![\w-])" + re.escape(option.replace("_", " ")) + r"(?![\w-])", text, re.IGNORECASE)]
        return said if len(said) == 1 else []

    def _direction_starts(self, starts: list[int], path: tuple) -> list[int]:
        """The starts a from-like parameter (``departure_location``, ``from_timezone``,
        ``base_currency``) can take are those not right after "to", "into" or the "and" of
        "between X and Y", and a to-like one's (``destination``, ``target_language``) those not
        right after "from" or "between". In the recorded teacher answers, of the values of such
        parameters found once in the request, 87 after "from" and 100 after "to" go with the
        wording, none against it (`_after_between` for "between")."""
        words = set(_parameter_words(path))
        is_from, is_to = bool(words & _FROM_NAME_WORDS), bool(words & _TO_NAME_WORDS)
        if is_from == is_to:
            return starts
        if is_from:
            return [s for s in starts if (word := self.word_before(s)) not in ("to", "into")
                    and not (word == "and" and self._after_between(s))]
        return [s for s in starts if self.word_before(s) not in ("from", "between")]

    def _after_between(self, p: int) -> bool:
        """Does token ``p``, said after an "and", follow the "and" of "between X and Y"? (The
        recorded teachers give Y to the to-like parameter and X to the from-like one: 19 and 18
        times, once the other way.)"""
        text, start = self.r.segments[self.r.segment[p]], self.r.offsets[p][0]
        return _BETWEEN_AND.search(text, max(0, start - 80), start) is not None

    def _after_capital_the(self, p: int) -> bool:
        """Is the capitalised word at ``p`` the second word of a name that a capital "The" in
        mid-sentence starts ("Weeknd" of "for The Weeknd's concert", "Plaza" of "at The Plaza")?
        The recorded teachers keep such an article in 21 of 21 values (a first version that took
        any capitalised word before as a name's start also cut "Lawyer John Doe" and
        "Warehouse WH001")."""
        text, start = self.r.segments[self.r.segment[p]], self.r.offsets[p][0]
        if not text[start:start + 1].isupper() or not text.endswith("The ", 0, start):
            return False
        before = text[max(0, start - 64):start - 4]
        if before[-1:].isalnum():  # "BatheThe" holds no article
            return False
        before = before.rstrip()
        return bool(before) and before[-1] not in _SENTENCE_ENDS

    def _starts_state_name(self, p: int) -> bool:
        """Does a US state's name ("California", "new york") start at token ``p``?"""
        return bool(self.r.word_start[p]) and bool(_state_name().match(self.r.segments[self.r.segment[p]], self.r.offsets[p][0]))

    def _place_runs(self) -> list[tuple[int, list[int]]]:
        """(first token, last token of each part) of each run of capitalised parts joined by
        commas in the latest request ("Riga, Latvia", "2020 Addison Street, Berkeley, CA, USA")."""
        if self._places is None:
            self._places = []
            text, first_at, last_at = self._latest_tokens()
            for m in _CAPITAL_PARTS.finditer(text):
                ends, at = [], m.start()
                for part in m.group().split(", "):
                    at += len(part)
                    ends.append(last_at.get(at))
                    at += 2
                if m.start() in first_at and None not in ends:
                    self._places.append((first_at[m.start()], ends))
        return self._places

    def _place_starts(self, starts: list[int]) -> list[int]:
        """For a parameter that wants a place in comma-joined parts (`place_parts`): the starts
        not inside such a run of the request other than its first word ("Latvia" of "Riga,
        Latvia" is no start). Recorded teachers: 10 of the 11 values of such parameters that
        overlap a run take it whole, up to the parts the description shows."""
        inside = {p for first, ends in self._place_runs() for p in range(first + 1, ends[-1] + 1)}
        return [p for p in starts if p not in inside]

    def _place_ends(self, start: int, ends: list[int], parts: int) -> list[int]:
        """The end of a place run that ``start`` begins, after as many parts as the parameter's
        description shows (or all the run has): "Portland, OR", not "Portland"."""
        for first, run_ends in self._place_runs():
            if first == start:
                return [e for e in ends if e == run_ends[min(parts, len(run_ends)) - 1]]
        return ends

    def _unit_starts(self, starts: list[int], path: tuple) -> list[int]:
        """The starts of numbers not followed by a unit of another quantity than the one the
        numeric parameter's name says ("0°C" is no ``mass``, "1kg" no ``initial_temperature``). In
        the recorded teacher answers, 229 of 230 numbers followed by a unit of mass, temperature,
        length or time went to a parameter named for that quantity (the other: 60 minutes as
        ``session_length``, a name this rule does not read). Nor does such a parameter take an
        amount of money ("$2000" is no ``period_in_years``): the teachers give the 150 numbers
        said after a currency sign to money parameters (amount, price, budget, ...), none to one
        named for these quantities."""
        words = set(_parameter_words(path))
        wanted = {q for q, names in _QUANTITY_NAME_WORDS.items() if words & names}
        if len(wanted) != 1:
            return starts
        kept = []
        for p in starts:
            text, start = self.r.segments[self.r.segment[p]], self.r.offsets[p][0]
            if MONEY_AMOUNTS and text[max(0, start - 2):start].strip()[-1:] in ("$", "€", "£"):
                continue
            m = _NUMBER_THEN_UNIT.match(text, start)
            if m is None or next(q for q, unit in m.groupdict().items() if unit is not None) in wanted:
                kept.append(p)
        return kept

    def _sibling_starts(self, starts: list[int], key: str, tool: int) -> list[int]:
        """Numbered or lettered parameters (num1, num2; a, b, c) take the numbers of a list of the
        request in order ("the GCD of 12 and 18", "coefficients 2, 3 and -4"): the one after a
        given sibling takes the list's next number, the first of them no number but a list's
        first. Recorded teachers: 29 of 29 such pairs take consecutive elements, 28 of 28 first
        siblings the first (`runs/s14/sibling_next.py`)."""
        before, after = _sibling(key, -1), _sibling(key, +1)
        if before is not None and before in self.call_anchors:
            s, e, _ = self.call_anchors[before]
            if self.r.segment[s] != self._latest_request():
                return starts
            text, first_at, _ = self._latest_tokens()
            a, b = self.r.offsets[s][0], self.r.offsets[e][1]
            group = _numbers_listed_with(text, a, b)
            i = group.index((a, b))
            nxt = first_at.get(group[i + 1][0]) if i + 1 < len(group) else None
            return [nxt] if nxt in starts else starts
        if after is not None and (tool, (after,)) in self.r.param_pos and (
                before is None or (tool, (before,)) not in self.r.param_pos):
            size = 1  # the series' length: "a", "b", "c" -> 3
            while (name := _sibling(key, size)) is not None and (tool, (name,)) in self.r.param_pos:
                size += 1
            later = {p for group in self._number_lists() if len(group) == size for element in group[1:] for p in element}
            return [p for p in starts if p not in later]
        return starts

    def _counted_starts(self, starts: list[int], key: str, tool: int) -> list[int]:
        """A number right before a noun that names exactly one other numeric parameter of the tool
        ("two adults" beside ``children``, "3 bathrooms" for ``number_of_baths``) is that
        parameter's, so this one does not take it. Recorded teachers: of the numbers so placed
        that a call gives, 36 go to the parameter the noun names, 2 elsewhere ("100 units" as a
        ``production_rate`` beside ``units_produced``; `runs/s15/counted.py`)."""
        nouns = self._count_nouns(tool)
        if key not in nouns or len(nouns) < 2:
            return starts
        kept = []
        for p in starts:
            m = _NUMBER_THEN_WORD.match(self.r.segments[self.r.segment[p]], self.r.offsets[p][0])
            if m and parse_number(m.group(1)) is not None:
                noun = m.group(2).lower()
                named = [k for k, stems in nouns.items() if any(noun.startswith(w[:4]) or w.startswith(noun[:4]) for w in stems)]
                if len(named) == 1 and named[0] != key:
                    continue
            kept.append(p)
        return kept

    def _count_nouns(self, tool: int) -> dict[str, list[str]]:
        """The tool's top-level numeric parameters and the words of each name that can say what it
        counts (``number_of_baths`` -> ["baths"]; none after "per": ``cost_per_meter`` is no length)."""
        if tool not in self._count_nouns_of:
            props = self.specs[tool].parameters.get("properties", {})
            nouns = {}
            for key, node in props.items():
                if isinstance(node, dict) and _numeric(node):
                    words = list(_name_words_cached(key))
                    words = words[:words.index("per")] if "per" in words else words
                    nouns[key] = [w for w in words if len(w) >= 4 and w not in _COUNT_NAME_WORDS]
            self._count_nouns_of[tool] = nouns
        return self._count_nouns_of[tool]

    def _number_lists(self) -> list[list[set[int]]]:
        """The lists of numbers of the latest request ("2, 3 and -4"), each number as its tokens.
        A series of parameters reads a list only as long as itself: "3 and 4, 5 and 12" is two
        pairs for (a, b), not a list of four."""
        if self._lists_of_numbers is None:
            self._lists_of_numbers, seen = [], set()
            text, first_at, _ = self._latest_tokens()
            latest = self._latest_request()
            for s, e, _ in self._number_spans():
                if self.r.segment[s] != latest:
                    continue
                group = tuple(_numbers_listed_with(text, self.r.offsets[s][0], self.r.offsets[e][1]))
                if len(group) > 1 and group not in seen:
                    seen.add(group)
                    self._lists_of_numbers.append([{first_at[c] for c in range(x, y) if c in first_at} for x, y in group])
        return self._lists_of_numbers

    def _named_plainly(self, path: tuple, asked: bool = False) -> bool:
        """Does the latest request name what a boolean parameter switches on, with no negation
        before it ("including human impact" for ``include_human_impact``, "a direct flight" for
        ``direct_flight``)? Then a given value is true: the recorded teachers give such a
        parameter true 45 times and false once (`runs/s13/bool_said.py`). Every content word of
        the name must be said, the start of it at least ("standardiz..." for ``standardize``)."""
        words = [w for w in _parameter_words(path) if len(w) > 2 and w not in _SWITCH_WORDS]
        latest = self._latest_request()
        if not words or latest is None:
            return False
        text = self.r.segments[latest]
        found = [re.search(r"\b" + re.escape(w[:max(4, len(w) - 3)]), text, re.IGNORECASE) for w in words]
        if asked:  # ``asked``: the first word also right after "with" or "include" ("with verdict")
            found[0] = re.search(_ASKED_FOR + re.escape(words[0][:max(4, len(words[0]) - 3)]), text, re.IGNORECASE)
        return all(found) and not _NEGATED.search(text, 0, found[0].start())

    def word_before(self, p: int) -> str:
        """The lower-case word right before token ``p`` in its text (spaces, quotes and brackets between)."""
        start = self.r.offsets[p][0]
        m = _WORD_BEFORE.search(self.r.segments[self.r.segment[p]][max(0, start - 40):start])
        return m.group(1).lower() if m else ""

    def _named_starts(self, starts: list[int], path: tuple) -> list[int]:
        """The span starts right after the parameter's own name and "=" or ":" in the latest
        request ("a=1, b=-3", "start_time: 10:00 AM"): that value is the parameter's. In the
        recorded teacher answers 23 of the 25 such values start there (the other two reword the
        text that starts there)."""
        key = path[-1] if path and path[-1] not in (ITEMS, "*") else None
        if key is None:
            return []
        if self._assignments is None:
            self._assignments = {}
            text, first_at, _ = self._latest_tokens()
            for m in _ASSIGNMENT.finditer(text):
                if m.end() in first_at:
                    self._assignments.setdefault(m.group(1).casefold(), set()).add(first_at[m.end()])
        named = self._assignments.get(str(key).casefold(), ())
        return [s for s in starts if s in named]

    def _quoted_after_name(self, starts: list[int], path: tuple) -> list[int]:
        """The span starts that open a quoted string of the latest request said right after the
        parameter's whole name, a linking word ("is", "as", "called", ...) allowed between: "with
        the title 'Julian is testing12'" gives ``Title`` that value ("a message saying '...'" is not
        ``prompt_message``'s: "prompt" is not said). Not once an earlier call took one of those
        quotes: then the model chooses ("the same game"; or the quote was another tool's
        location); nor where an earlier quote of the request is still untaken ("a project called
        'Project Nexus' ... a task with the name 'Clean the house'": the later quote is a later
        call's). Recorded teachers, one-call answers: 137 of the 144 such quoted strings are the
        value whole, 4 overlap it, 3 are another's (two of them swapped by the teacher;
        `runs/s16/quoted_name2.py`)."""
        words = _parameter_words(path)
        if not words:
            return []
        text, first_at, _ = self._latest_tokens()
        if self._quote_starts is None:  # (opening quote's character, first token, text) of each quote
            self._quote_starts = [(m.start(), first_at[m.start(2)], m.group(2).casefold())
                                  for m in _QUOTED_STRING.finditer(text) if m.start(2) in first_at]
        said = self._quoted_names.get(words)
        if said is None:
            name = re.compile(r"\b" + r"[\s_-]*".join(map(re.escape, words)) + r"s?\b" + _NAME_LINK + r"\s*[:=]?\s*$",
                              re.IGNORECASE)
            said = self._quoted_names[words] = {q for at, q, _ in self._quote_starts if name.search(text, 0, at)}
        taken = set().union(*self.earlier_starts.values())
        if said & taken:
            return []  # an earlier call took one: "in the location 'San Francisco'" was another tool's
        # quotes are taken in order: none skips an earlier quote that no argument took as a span or
        # gave as its value (an enum option said in quotes: "a 'NewsItem' with the title '...'")
        used = taken | self.used_starts
        given = [v for call in self.stack[0].calls for v in call["arguments"].values()]
        given += list(self.stack[1].value.values()) if len(self.stack) > 1 else []
        given_text = {v.casefold() for v in given if isinstance(v, str)}
        return [s for s in starts if s in said
                and all(q in used or quoted in given_text for _, q, quoted in self._quote_starts if q < s)]

    def _without_own_name(self, starts: list[int], path: tuple) -> list[int]:
        """Span starts other than a lower-case or all-capitals word of the parameter's own name:
        the request's "namespace cascade-sandbox" gives namespace="cascade-sandbox", "ISBN
        9781403915230" isbn="9781403915230" (recorded teachers: 411 values after such a lower-case
        word and 6 after such an all-capitals one leave it out; the 20 that start with one are
        mostly names, "Library of Congress" for library_name, which a capital keeps)."""
        words = {w for w in _parameter_words(path) if len(w) > 2}
        if not words:
            return starts
        return [s for s in starts if (word := self.first_word(s)) not in words
                and not (word.isupper() and word.casefold() in words)]

    def _without_own_name_end(self, start: int, ends: list[int], path: tuple) -> list[int]:
        """Ends of a capitalised text value other than a lower-case word of the parameter's own
        name: "Los Angeles court" gives court_location="Los Angeles". Recorded teachers: of the
        capitalised values such a word follows or ends, 362 stop before it and 15 keep it
        ("Zika virus" for target_virus, sentences ending in "text" for text)."""
        text, first = self.r.segments[self.r.segment[start]], self.r.offsets[start][0]
        words = {w for w in _parameter_words(path) if len(w) > 2}
        if not words or not text[first:first + 1].isupper():
            return ends
        kept = []
        for e in ends:
            last = text[first:self.r.offsets[e][1]].rsplit(None, 1)
            if len(last) < 2 or last[1] not in words:
                kept.append(e)
        return kept

    def _new_object(self, node: dict, path: tuple, tool: int) -> _Object:
        keys = list(node.get("properties", {}))
        required = set(node.get("required", []))
        extra = node.get("additionalProperties", True)
        free = not keys and extra is not False
        return _Object(node, path, tool, keys, [j for j, k in enumerate(keys) if k in required], free)

    # -- taking an action --
    def step(self, action: int) -> None:
        struct, pos = self.allowed()
        ok = struct[action] if action < N_STRUCT else (action - N_STRUCT < self.L and pos[action - N_STRUCT])
        if not ok:
            raise DecodeError(f"action {action} is not allowed in state {self.kind}")
        self.steps += 1
        top = self.stack[-1]
        p = action - N_STRUCT
        if isinstance(top, _Calls):
            if action == STOP:
                self.done = True
                return
            tool = self.tool_of_pos[p]
            obj = self._new_object(self.specs[tool].parameters, (), tool)
            obj.is_call = True
            self.call_starts, self.call_anchors, self.call_item_anchors = {}, {}, {}
            self.call_text_starts = set()
            self.call_covered, self.call_fresh_taken = set(), set()
            self.stack.append(obj)
        elif isinstance(top, _Object):
            if top.pending_key is not None:
                self._start_value(self._free_value_node(top), top.path + ("*",), top.tool, action)
            else:
                self._object_action(top, action)
        elif isinstance(top, _Array):
            if action == END_LIST:
                self.stack.pop()
                self._deliver(top.value)
            else:
                self._start_value(top.node.get("items", {}), top.path + (ITEMS,), top.tool, action)
        elif isinstance(top, _Span):
            self.stack.pop()
            text = self.r.span_text(top.start, p)
            if top.as_key:
                obj = self.stack[-1]
                obj.pending_key = text
            else:
                self.call_covered.update(range(top.start, p + 1))
                frame = self.stack[-1]
                if isinstance(frame, _Object) and frame.is_call:
                    self.call_anchors[frame.pending_key] = (top.start, p, top.node)
                elif isinstance(frame, _Array) and len(frame.path) == 1:  # an item of a top-level array
                    self.call_item_anchors.setdefault(frame.path[0], []).append((top.start, p, top.node))
                self._deliver(span_value(text, top.node, self.r.text_after(p))[1])
        elif isinstance(top, _Value):
            self.stack.pop()
            self._start_value(top.node, top.path, top.tool, action)

    def _object_action(self, obj: _Object, action: int) -> None:
        if action == END:
            self.stack.pop()
            if obj.is_call:
                self.stack[-1].calls.append({"name": self.specs[obj.tool].name, "arguments": obj.value})
                self.anchors.append((self.call_anchors, self.call_item_anchors))
                self.covered.append(self.call_covered)
                copied = [p for starts in self.call_starts.values() for p in starts]
                self.fresh_taken.append(set() if len(set(copied)) < len(copied) else self.call_fresh_taken)
                self.fresh_numbers = self.fresh_texts = None
                for key, starts in self.call_starts.items():
                    self.earlier_starts.setdefault(key, set()).update(starts)
            else:
                self._deliver(obj.value)
            return
        p = action - N_STRUCT
        for j in range(obj.last + 1, len(obj.keys)):
            key = obj.keys[j]
            if self.r.param_pos.get((obj.tool, obj.path + (key,))) == p:
                obj.last = j
                obj.pending_key = key
                optional = FRESH_OPTIONAL_VALUES and j not in obj.required_idx
                self.stack.append(_Value(obj.node["properties"][key], obj.path + (key,), obj.tool, optional))
                return
        self.stack.append(_Span({"type": "string"}, p, as_key=True))  # a free-form key

    def _start_value(self, node: dict, path: tuple, tool: int, action: int) -> None:
        """Apply the first action of a value of ``node`` (the frame for it is not on the stack)."""
        inner, _ = primary_branch(node)
        if action == NULL:
            return self._deliver(None)
        if action in (TRUE, FALSE):
            return self._deliver(action == TRUE)
        if action == LIST:
            self.stack.append(_Array(inner, path, tool))
            return
        p = action - N_STRUCT
        for q, value in self.r.option_pos.get((tool, path), []):
            if q == p:
                return self._deliver(value)
        if inner.get("type") == "object":
            obj = self._new_object(inner, path, tool)
            self.stack.append(obj)
            return self._object_action(obj, action)
        self.call_starts.setdefault((tool, path), set()).add(p)
        if inner.get("type") == "string":
            self.call_text_starts.add(p)
        if self.fresh_numbers and p in self.fresh_numbers and _numeric(inner):
            self.call_fresh_taken.add(p)
        if self.fresh_texts and p in self.fresh_texts.get((tool, path), ()):
            self.call_fresh_taken.add(p)
        if isinstance(self.stack[-1], _Array):
            self.stack[-1].starts.append(p)
        self.stack.append(_Span(inner, p, path=path))

    def _deliver(self, value: Any) -> None:
        """A value is complete: hand it to the frame that asked for it."""
        top = self.stack[-1]
        if isinstance(top, _Array):
            top.value.append(value)
        elif isinstance(top, _Object):
            top.value[top.pending_key] = value
            top.pending_key = None
        else:
            raise AssertionError("value delivered with no frame waiting")

    @property
    def used_starts(self) -> set[int]:
        """Span starts already used in the current call, by any parameter."""
        return set().union(*self.call_starts.values())

    def starts_of_earlier_calls(self) -> set[int]:
        """Span starts that earlier calls of this tool gave the value being formed now."""
        top = self.stack[-1]
        if self.fresh_numbers is not None and isinstance(top, _Value) and _numeric(top.node):
            return set()  # a call for a number still unused repeats the others (UNUSED_NUMBERS)
        if self.fresh_texts is not None and PARALLEL_REPEATS:
            return set()  # any call made for unused values repeats the others' texts too (PARALLEL_REPEATS)
        if isinstance(top, _Value):
            return self.earlier_starts.get((top.tool, top.path), set())
        if isinstance(top, _Array):
            return self.earlier_starts.get((top.tool, top.path + (ITEMS,)), set())
        return set()

    def _last_chance_for_fresh(self, path: tuple) -> bool:
        """In a call made for unused numbers: no number of the call is one of them yet, and this
        top-level parameter is the call's last numeric one, so it must take one."""
        if len(path) != 1 or self.call_covered & self.fresh_numbers or len(self.stack) < 2:
            return False
        obj = self.stack[-2]
        if not (isinstance(obj, _Object) and obj.is_call):
            return False
        later = obj.keys[obj.last + 1:]
        return not any(_numeric(obj.node["properties"][k]) for k in later)

    def unused_numbers(self) -> set[int]:
        """First tokens of the numbers of the latest request (whole words: not "3D", "XY1234",
        "m^3") that no completed call copied or gave as a value (a number, or inside a text)."""
        if self._said_numbers is None:
            text, first_at, _ = self._latest_tokens()
            self._said_numbers = [(first_at[m.start()], m.group(), float(m.group().replace(",", "")))
                                  for m in _SAID_NUMBER.finditer(text) if m.start() in first_at]
        if not self._said_numbers:
            return set()
        taken = set().union(*self.covered)
        values = self._values_given()
        texts = [v for kind, v in values if kind == "str"]
        return {p for p, said, number in self._said_numbers
                if p not in taken and ("number", number) not in values and not any(said in t for t in texts)}

    def _values_given(self) -> set:
        """Every scalar the completed calls give, as decoded and as `calls` returns them (lists
        fanned out). Kept per number of completed calls: both unused-value rules ask at a stop."""
        done = len(self.stack[0].calls)
        if self._given is None or self._given[0] != done:
            self._given = (done, scalar_values([call["arguments"] for call in self.stack[0].calls + self.calls()]))
        return self._given[1]

    def unused_parallel_values(self) -> dict[tuple, set[int]]:
        """(tool, path) -> first tokens of capitalised phrases of the latest request that stand
        where a capitalised text value of a completed call stands, after or before the same word
        (not an article), with a link word between them ("the most played Pop song and ... the
        most played Rock song", "USD to AUD and USD to CAD", "in New York City ... and another one
        in San Diego"), that no call used. Not at a sentence's start, and not a short all-capital
        word beside a value that is none ("in Paris and in ID"). A call made for them repeats the
        earlier call's numbers where no number is unused (`fresh_numbers` is then empty)."""
        text, first_at, _ = self._latest_tokens()
        latest = self._latest_request()
        if not text:
            return {}
        taken = set().union(*self.covered)
        texts = [v.lower() for kind, v in self._values_given() if kind == "str" and v]
        phrases = [m for m in _CAPITAL_PHRASE.finditer(text)
                   if m.start() in first_at and first_at[m.start()] not in taken
                   and not _SENTENCE_START.search(text, 0, m.start())
                   and not any(m.group().lower() in t or t in m.group().lower() for t in texts)]
        found: dict[tuple, set[int]] = {}
        for (spans, _), call in zip(self.anchors, self.stack[0].calls):
            tool = next(i for i, spec in enumerate(self.specs) if spec.name == call["name"])
            for key, (start, end, node) in spans.items():
                if self.r.segment[start] != latest or node.get("type") != "string":
                    continue
                a, b = self.r.offsets[start][0], self.r.offsets[end][1]
                value = text[a:b]
                if not value[:1].isupper():
                    continue
                before, after = _word_before_at(text, a), _word_after_at(text, b)
                for m in phrases:
                    if m.start() < b and m.end() > a:
                        continue
                    x = m.group()
                    if len(x) <= 3 and x.isupper() and not value.isupper():
                        continue
                    gap = text[b:m.start()] if b <= m.start() else text[m.end():a]
                    if not _PARALLEL_LINK.search(gap):
                        continue  # "on Mars if my weight on Earth": no second case is asked for
                    if (before not in _ARTICLES and _word_before_at(text, m.start()) == before) or (
                            after and _word_after_at(text, m.end()) == after):
                        found.setdefault((tool, (key,)), set()).add(first_at[m.start()])
        return found

    def repeats_for_fresh_value(self, i: int) -> bool:
        """Call ``i``, made for unused numbers or parallel values, took one (a number as a number,
        a parallel value for its parameter; and no span twice: "a tip of 15%" is no bill total of
        15 too) and, where an earlier call made the same tool, gives at least every argument the
        latest gave and takes a value said after the first one's first value ("..., then repeat
        with a change in time of 10 seconds")."""
        calls = self.stack[0].calls
        if not self.fresh_taken[i]:
            return False
        earlier = [j for j in range(i) if calls[j]["name"] == calls[i]["name"]]
        if not earlier:
            return True
        return (_key_paths(calls[earlier[-1]]["arguments"]) <= _key_paths(calls[i]["arguments"])
                and max(self.fresh_taken[i]) > min(self.covered[earlier[0]], default=-1))

    def calls_done(self) -> int | None:
        """How many calls are complete when the next action starts a call or stops, else None."""
        top = self.stack[-1]
        return len(top.calls) if isinstance(top, _Calls) and not self.done else None

    def calls(self, first: int | None = None) -> list[dict]:
        """The decoded calls (the ``first`` ones), without a later call of a tool that brings no
        value its earlier calls did not already use: an identical call repeated, or the same
        values in other parameters ("gcd(12, 18)" then "gcd(18, 12)"). In the recorded teacher
        answers 109 of 111 later calls of a tool bring a new value (the other 2 are garbled
        parses, and none repeats a call); a greedy extra call that only reshuffles is a guess."""
        out, anchors, used = [], [], {}
        latest = self._latest_request()
        for call, (spans, item_spans) in zip(self.stack[0].calls[:first], self.anchors):
            anchored = {key: self._anchor(*span) for key, span in spans.items() if self.r.segment[span[0]] == latest}
            joined = {}
            if JOIN_LISTS:
                separators = {key: sep for key, span in spans.items() if (sep := joined_list_separator(span[2]))}
                call, joined = join_lists(call, anchored, separators)
                anchored = {key: anchor for key, anchor in anchored.items() if key not in joined}
            values = scalar_values(call["arguments"]) | {("str", part) for parts in joined.values() for part in parts}
            earlier = used.get(call["name"])
            if earlier is not None and values <= earlier:
                continue
            if WHOLE_REQUEST_VALUES and self.tool_choice == "auto" and self._gives_whole_request(call):
                continue
            if REQUEST_START_VALUES and self.tool_choice == "auto" and self._copies_request_start(spans, item_spans, latest):
                continue
            if ADDRESS_VALUES and self.tool_choice == "auto" and _gives_a_word_as_address(call):
                continue
            used[call["name"]] = (earlier or set()) | values
            if COMPLETE_LISTS:
                call = complete_lists(call, self._array_anchors(call, item_spans, latest))
            out.append(call)
            anchors.append(anchored)
        return fan_out(out, anchors, self.max_calls) if FAN_OUT_LISTS else out

    def _gives_whole_request(self, call: dict) -> bool:
        """A text argument of ``call`` is the whole latest request (of three words or more), end
        punctuation aside: a copy of the question, not a value found in it (`WHOLE_REQUEST_VALUES`)."""
        request = _without_end_punctuation(self._latest_tokens()[0])
        if len(request.split()) < 3:
            return False
        return any(isinstance(v, str) and _without_end_punctuation(v) == request for v in call["arguments"].values())

    def _copies_request_start(self, spans: dict, item_spans: dict, latest: int | None) -> bool:
        """A text argument or array item of the call (``spans``: key -> copied span; ``item_spans``:
        key -> the items' spans) starts at the first word of the latest request: "help" of "help
        me", "Help" of "Help me find a movie", "What time" of "What time is it?" (`REQUEST_START_VALUES`)."""
        if latest is None:
            return False
        text = self.r.segments[latest]
        first = len(text) - len(text.lstrip(" \t\n\"'“‘`"))
        copied = list(spans.values()) + [span for items in item_spans.values() for span in items]
        return any(self.r.segment[start] == latest and self.r.offsets[start][0] == first
                   and node.get("type") == "string" for start, _, node in copied)

    def _array_anchors(self, call: dict, item_spans: dict, latest: int | None) -> dict:
        """For `complete_lists`: per top-level array argument, (maxItems, anchors of its items):
        the spans its items were copied from, or where the request says its enum options."""
        props = next(s for s in self.specs if s.name == call["name"]).parameters.get("properties", {})
        out = {}
        for key, value in call["arguments"].items():
            node = primary_branch(props.get(key, {}))[0]
            if not isinstance(value, list) or node.get("type") != "array" or latest is None:
                continue
            if key in item_spans:
                anchors = [self._anchor(*span) for span in item_spans[key] if self.r.segment[span[0]] == latest]
            else:
                anchors = self._option_anchors(value, primary_branch(node.get("items", {}))[0], latest)
            out[key] = (node.get("maxItems", self.max_items), anchors)
        return out

    def _option_anchors(self, chosen: list, items: dict, latest: int) -> list:
        """Where the request says each chosen enum option ("elevation" for "Elevation"), with a
        reader that maps another span to the option it names; [] when one is not said."""
        options = {str(o).casefold().replace("_", " "): o for o in enum_options(items) or [] if isinstance(o, str)}
        text = self.r.segments[latest]

        def to_value(span: str, after: str) -> Any:
            return options.get(span.casefold().replace("_", " "))
        anchors = []
        for value in chosen:
            said = isinstance(value, str) and re.search(r"(?<!\w)" + re.escape(value.replace("_", " ")) + r"(?!\w)",
                                                        text, re.IGNORECASE)
            if not said:
                return []
            anchors.append((text, said.start(), said.end(), to_value))
        return anchors

    def _latest_request(self) -> int | None:
        """The conversation segment of the last user message: lists in earlier turns were answered
        there. Found once per decoder: several rules ask at every decision."""
        if self._latest_segment is None:
            starts = [self.r.segment[p + 1] for p, t in enumerate(self.r.ids[:-1]) if t == MARK_USER]
            self._latest_segment = (next((seg for seg in reversed(starts) if seg >= 0), None),)
        return self._latest_segment[0]

    def _anchor(self, start: int, end: int, node: dict) -> tuple[str, int, int, Callable]:
        """(segment text, character span, reader of another span of that text) for `listed_values`.
        The reader takes no text the decoder would not start a value at: a lower-case number word
        ("six" of "five burgers and six chicken wings" is no item, `_no_text_start`)."""
        def to_value(text: str, after: str) -> Any:
            if node.get("type") not in ("integer", "number") and _is_number_word(text.split(" ", 1)[0]):
                return None
            ok, value = span_value(text, node, after)
            return value if ok else None
        return self.r.segments[self.r.segment[start]], self.r.offsets[start][0], self.r.offsets[end][1], to_value


def _day_parameter_nodes(specs: list) -> frozenset[int]:
    """ids of the free-text nodes of parameters named for a day ("date", "start_date",
    "dateOfJourney") or of format "date", at any depth; a node another parameter shares is left
    out (`DAY_WORDS`). Descriptions are not read: "the fossil you want to date" is an ID."""
    day, other = set(), set()

    def walk(node: dict) -> None:
        for key, prop in node.get("properties", {}).items():
            inner = primary_branch(prop)[0]
            words = _name_words_cached(key)
            named = ("date" in words or "birthdate" in words) and "format" not in words
            if inner.get("type") == "string" and enum_options(inner) is None and (named or inner.get("format") == "date"):
                day.add(id(inner))
            else:
                other.add(id(inner))
            walk(inner)
            walk(primary_branch(inner.get("items", {}))[0])
    for spec in specs:
        walk(spec.parameters)
    return frozenset(day - other)


_DAY_START_WORDS = frozenset(
    "monday mon tuesday tue tues wednesday wed thursday thu thur thurs friday fri saturday sat sunday sun "
    "today tomorrow tonight yesterday next last this coming upcoming".split())


def _numbers_listed_with(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The character spans of the list of numbers the number at ``text[start:end]`` stands in,
    itself included, in text order (just itself when it stands in none)."""
    return sorted(listed_with(text, start, end, numeric=True) + [(start, end)])


_CAPITAL_PHRASE = re.compile(r"(?<![\w-])(?<!\w')[A-Z][\w-]*(?:'\w+)*(?: [A-Z][\w-]*(?:'\w+)*)*")  # "McDonald's", not "Office'"
_SENTENCE_START = re.compile(r"(?:^|[.!?]['\"]?)\W*$")
_PLAIN_WORD = re.compile(r"[A-Za-z0-9][\w'-]*")
_PARALLEL_LINK = re.compile(r"\b(?:and|also|as well as|then|another|vs|versus|compared? (?:to|with))\b", re.IGNORECASE)
_ARTICLES = frozenset({None, "the", "a", "an"})


def _word_before_at(text: str, at: int) -> str | None:
    """The word that ends before ``at`` (quotes and spaces between), lower-cased."""
    words = _PLAIN_WORD.findall(text[max(0, at - 40):at])
    return words[-1].lower() if words else None


def _word_after_at(text: str, at: int) -> str | None:
    """The word that starts after ``at`` (quotes and spaces between), lower-cased."""
    m = _PLAIN_WORD.search(text, at, at + 40)
    return m.group().lower() if m else None


def _gives_a_word_as_address(call: dict) -> bool:
    """A text argument (or item) of a parameter named for a web address ("url", "image_url",
    "link", "endpoint", "href"; not an address's name or id) holds none of ". / : _ -": a word of
    the request, not an address (`ADDRESS_VALUES`)."""
    for key, value in call["arguments"].items():
        words = set(_name_words_cached(key))
        if not words & _ADDRESS_WORDS or words & _NOT_ADDRESS_WORDS:
            continue
        if any(isinstance(v, str) and not _ADDRESS_MARK.search(v) for v in (value if isinstance(value, list) else [value])):
            return True
    return False


_ADDRESS_WORDS = frozenset({"url", "urls", "uri", "link", "links", "endpoint", "href"})
_NOT_ADDRESS_WORDS = frozenset({"name", "id", "username", "title", "text", "type", "description"})
_ADDRESS_MARK = re.compile(r"[./:_-]")


def _without_end_punctuation(text: str) -> str:
    """``text`` without surrounding spaces and a final "?", "." or "!" (`_gives_whole_request`)."""
    return text.strip().rstrip("?.!").strip()


def _numeric(node: dict) -> bool:
    """Does the node (its first non-null branch) ask for a number?"""
    return primary_branch(node)[0].get("type") in ("integer", "number")


def _key_paths(value: Any, path: tuple = ()) -> set[tuple]:
    """The key paths of the objects inside an argument value ({"body": {"mode": 1}} -> body, body.mode)."""
    if not isinstance(value, dict):
        return set()
    return set().union(*({path + (k,)} | _key_paths(v, path + (k,)) for k, v in value.items()))


def _is_number_word(word: str) -> bool:
    """Is ``word`` a lower-case number word ("five"), which starts no text value (`NUMBER_WORD_TEXTS`)?"""
    return NUMBER_WORD_TEXTS and word in _NUMBER_WORDS


def _sibling(key: str, step: int) -> str | None:
    """The parameter name ``step`` places before or after ``key`` in a numbered or lettered series:
    num1 -> num2, side_2 -> side_1, b -> a (single letters a-z); None past the series' start."""
    m = re.fullmatch(r"(.*?)(\d+)", str(key))
    if m:
        n = int(m.group(2)) + step
        return m.group(1) + str(n) if n >= 1 else None
    if len(str(key)) == 1 and str(key).isalpha() and str(key).islower():
        c = chr(ord(key) + step)
        return c if "a" <= c <= "z" else None
    return None


def _parameter_words(path: tuple) -> tuple[str, ...]:
    """The words of the name of the parameter a value path ends in (an array's items belong to
    their parameter): several rules read them at every value decision, so they are remembered."""
    key = next((k for k in reversed(path) if k not in (ITEMS, "*")), None)
    return _name_words_cached(key) if isinstance(key, str) else ()


@lru_cache(maxsize=4096)
def _name_words_cached(key: str) -> tuple[str, ...]:
    return tuple(name_words(key))


# ---- the shared decoding loop ----------------------------------------------------------------------
def masked_log_softmax(logits: np.ndarray, struct: np.ndarray, pos: np.ndarray) -> np.ndarray:
    mask = np.concatenate([struct, pos])
    scores = np.full(logits.shape[-1], -np.inf)
    scores[: mask.size] = np.where(mask, logits[: mask.size], -np.inf)
    top = scores.max()
    return scores - top - math.log(np.exp(scores - top).sum())


# Between calls, greedy decoding may start a further call at p = 0.55 whose arguments are then
# guesses. With RESCORE_STOPS, stopping at each point between calls (after at least one) is
# remembered with its exact log-probability, and the answer is cut there when that beats the
# whole greedy answer: the likelier of the answers seen, at no extra model run. Never turns a
# call into no call (the first decision stays greedy).
RESCORE_STOPS = True
# A call whose copied value stands in a list of such values ("for 10, 20 and 30 years") is
# repeated for the others no call used (`needle_core.listed_values`).
FAN_OUT_LISTS = True
# An array argument that lists some values of a list in the request gets the rest, in the
# request's order ("facilities": ["Fiction"] for "Fiction and Wi-Fi"; `complete_lists`).
COMPLETE_LISTS = True
# A text value that overlaps a quoted string of the latest request is the whole quote
# (`CallDecoder.text_ends`).
QUOTED_WHOLE = True
# A parameter that asks for days in a written form copies a whole day where the text has one.
DATE_SPANS = True
# An optional argument is given a copied value only from a span no other argument of the call
# started at (`CallDecoder._fresh_value_left`).
FRESH_OPTIONAL_VALUES = True
# A value said right after its parameter's name and "=" or ":" ("a=1") is that parameter's.
NAMED_VALUES = True
# A quoted string said right after a text parameter's whole name ("the title 'X'") is its value.
QUOTED_NAMES = True
# A text parameter that takes a list in one string ("a comma-separated list of IDs") gets the
# listed values joined (`joined_list_separator`, `listed_values.join_lists`), not a call each.
JOIN_LISTS = True
# A capitalised text value does not start after a capital "The" in mid-sentence (`_after_capital_the`).
CAPITAL_THE = True
# A number followed by a unit of mass, temperature, length or time goes to no parameter named
# for another of these quantities (`CallDecoder._unit_starts`).
UNIT_QUANTITIES = True
# A capitalised text value does not end with a lower-case word of its parameter's own name.
OWN_NAME_ENDS = True
# A boolean the request names plainly ("including human impact") is true when given.
NAMED_BOOLEANS = True
# A from-like parameter takes no value said right after "to", a to-like one none after "from".
DIRECTION_WORDS = True
# A parameter whose description shows a place in comma-joined parts ("'City, State'") takes the
# request's whole run of such parts ("Portland, OR"; `place_parts`, `CallDecoder._place_runs`).
PLACE_FORMS = True
# A call does not end before an optional day parameter while the request names a day it has not used.
SAID_DAYS = True
# A call does not end before an optional boolean the request asks for after "with"/"include".
SAID_SWITCHES = True
# An enum value is the one option the latest request says as a word, where it says one (`_said_option`).
SAID_OPTIONS = True
# A text value does not end with the article "the" or "an" (`CallDecoder.text_ends`).
ARTICLE_ENDS = True
# An array that starts with the first element of a bracketed list ("[12, 15, 18]") copies it whole.
BRACKET_LISTS = True
# An array item is copied from a span that no argument of the call (nor an earlier item) started
# at, where the request has one: the recorded teachers' 1,333 items copied beside other arguments
# reuse another argument's span once (a coincidence of equal numbers), greedy decoding gives
# "stats_fields": ["LeBron James"] beside "player_name": "LeBron James".
FRESH_ITEMS = True
# A number said after a currency sign goes to no parameter named for mass, temperature, length or
# time (`CallDecoder._unit_starts`).
MONEY_AMOUNTS = True
# Numbered or lettered numeric parameters (num1, num2; a, b, c) take a list's numbers in order
# (`CallDecoder._sibling_starts`).
SIBLING_ORDER = True
# A number right before a noun naming another numeric parameter ("two adults") is that one's.
COUNTED_NOUNS = True
# A text value does not start with a lower-case number word (`CallDecoder._no_text_start`).
NUMBER_WORD_TEXTS = True
# A US city where a parameter asks for "City, ST" is written with its state (`city_with_state`).
CITY_STATES = True
# A city outside the US where a parameter asks for "'City, Country'" is written with its country.
CITY_COUNTRIES = True
# A US state where a parameter asks for a state's code is written as its code (`state_code`).
STATE_CODES = True
# A given array of plain values is not empty where an item can be formed (`_compute_allowed`).
NONEMPTY_ARRAYS = True
# An array can be given only where an item of it can be formed (`CallDecoder._feasible`): none of
# the 825 arrays in the recorded teacher answers is empty, and a tool whose required array can
# have no item ("traits" of {trait, percentage} for "Give me the MBTI of my friend") is not
# called; an optional one is left out.
ARRAYS_NEED_AN_ITEM = True
# An object inside an argument has at least one key: it can be given only where one of its
# properties can be formed, and it does not end before its first key where one can follow. The
# recorded teachers give 93 such objects, none empty; greedy decoding gave `"params": {}` to a
# weather API for "Test". A call's own arguments may still be empty (`tool_feasible`).
OBJECTS_NEED_A_KEY = True
# A call with a text argument that is the whole latest request is not returned: none of the 7,335
# recorded teacher answers to a request gives it as a value; greedy decoding does for questions no
# tool answers ("What is the time now in New York City?" as a sunrise tool's date). Only where no
# call is asked for (tool_choice "auto"): a required call stays.
WHOLE_REQUEST_VALUES = True
# Nor is a call with a text argument copied from where the latest request starts: 3 of the recorded
# teachers' 9,672 copied values start at its first word ("RoboCop, please greet ..."); greedy
# decoding gave "help" of "help me", "Help" of "Help me find a movie", "What time" of "What time is
# it?" to tools that cannot answer. Only with tool_choice "auto".
REQUEST_START_VALUES = True
# A call with a text argument named for a web address ("url", "link", "endpoint") that holds none of
# ". / : _ -" is not returned: a word of the request, not an address. The recorded teachers' 87
# values to such parameters all hold one ("worlds-largest-pizza" for an href the only one without
# ". / : _"); greedy decoding gave `requests.get` "url": "sea" for "I want go to the sea" and 40
# more such BFCL answers. Only where no call is asked for (tool_choice "auto").
ADDRESS_VALUES = True
# A text value does not cut digits joined by a colon ("17:15", `CallDecoder._splits_clock`).
CLOCK_TIMES = True
# An answer does not stop while a number of the latest request is unused (`unused_numbers`):
# greedy decoding stops after one call of "..., then repeat with a change in time of 10 seconds".
# The further call picks, for each numeric parameter, the earlier call's number or an unused one,
# its last numeric parameter an unused one; it is kept only where it took one
# (`repeats_for_fresh_value`), else the answer stops where the model would have stopped. Recorded
# teachers (runs/s17/unused_num.py): 4,956 of 5,134 one-call answers use every number of their request; 26 of 62
# answers that call one tool several times leave one unused after their first call.
UNUSED_NUMBERS = True
# A text parameter named for a day ("date", "start_date", "date_of_journey") or of format "date"
# takes a value that starts where a day can: a digit, a month or weekday name, "today", "next"...
# (`CallDecoder._starts_a_day`); where the input has no such word, it cannot be given (a required
# one: the tool is not called). The recorded teachers' copied values to such parameters all start
# so (131 of 131), and 406 of 408 of their values come with user turns that have such a word (the
# other 2 are invented dates); greedy decoding gave "date_of_journey": "to book" for "I would like
# to book train tickets from Sacramento".
DAY_WORDS = True
# One span of the input is copied into one text value of a call, not two: none of the recorded
# teachers' 10,508 calls gives two text arguments (or array items) the same text where the request
# says it once; greedy decoding does ("color1": "yellow", "color2": "yellow" for "Mix yellow and
# blue"; "username": "hey", "password": "hey"). Numbers may repeat ("from 2015 to 2015"). Where
# no other start is left, the span may be copied again (`CallDecoder._value_first`).
DISTINCT_TEXT_SPANS = True
# Where the tool the model scores highest (over the tools and stopping) cannot be called (a required
# argument cannot be formed: no day for a date, no item for an array), the answer stops there,
# rather than calling the next tool in the model's favour: the request asked for something none of
# the tools can do ("I want to book an IndiGo flight" with a date picker whose date the request does
# not give, then a multi-select widget). Not where a call is required (stopping is not allowed then).
INFEASIBLE_FAVOURITE_STOPS = True
# An answer does not stop while a parallel value is unused (`CallDecoder.unused_parallel_values`): a
# capitalised phrase of the latest request that stands where a capitalised text value of a call
# stands, after or before the same word (not an article), with "and", "also", "then", "another",
# "vs" or "compared to" between them: "the most played Pop song and also ... the most played Rock
# song", "USD to AUD and USD to CAD". The further call gives that parameter a parallel value and
# may repeat the earlier call's other values (no repeat handicap, `PARALLEL_REPEATS`: in any call made
# for unused numbers or parallel values, texts included; 2026-12-04 afternoon, keeping the handicap on
# texts in calls made for numbers only scores the same, +1 -1, `runs/s19/eval_fixrep`); it is kept
# only where it took one (as for `UNUSED_NUMBERS`). Recorded teachers (runs/s19/twin.py): 1 of
# 5,684 one-call answers leaves such a phrase unused ("a barcode in 'UPC-A' format").
PARALLEL_VALUES = True
PARALLEL_REPEATS = True
# A text value that starts inside a sentence ends in it (`CallDecoder._next_sentence`, in `text_ends`).
SENTENCE_SPANS = True
# A further call kept for an unused number or parallel value is not undone by `RESCORE_STOPS`: the
# answer does not stop before it because stopping there was likelier (the further call was made
# against the model's choice to stop, so its answer is always less likely).
KEEP_ASKED_CALLS = True
REUSE_PENALTY = 4.0  # log-probability handicap of a span start already used in the same call
REPEAT_PENALTY = 4.0  # handicap of the span an earlier call of the tool gave the same parameter


def greedy_decode_batch(decoders: list[CallDecoder], step_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
                        max_steps: int = 256) -> list[tuple[list[dict], float, int]]:
    """Decode a batch under each decoder's masks, running the model only for real decisions.

    ``step_fn(prev_actions [B, n], kinds [B, n]) -> logits [B, N_STRUCT + L]`` feeds ``n`` more
    steps to the model and returns the logits after the last one; ``prev_actions`` are output
    actions, ``-1`` before the first step (see `decoder_inputs`). An action the state machine
    forces (the only one allowed: a key in schema order, the end of a one-token span) is taken
    without the model and its step is fed together with the next one: about 4 in 10 steps on
    BFCL's simple requests. Each call feeds the same ``n`` steps to every row (the fewest any
    unfinished row has queued); finished rows are fed ``STOP`` and ignored. Past ``max_steps``
    the most closing allowed action is taken, so every result is complete. Returns, per row,
    (calls, log-probability of the chosen actions, steps); see `RESCORE_STOPS` for the one
    departure from greedy.
    """
    B = len(decoders)
    logp = np.zeros(B)
    stop_instead: list[tuple[float, int] | None] = [None] * B  # likeliest stop passed after >= 1 call
    queued: list[list[tuple[int, int]]] = [[] for _ in range(B)]  # (previous action, kind) not yet fed
    continued: list[list[tuple[int, float]]] = [[] for _ in range(B)]  # (calls done, log-p of stopping) where UNUSED_NUMBERS went on

    def advance(b: int, action: int) -> None:
        """Queue the step after ``action``, taking forced actions until a decision needs the model."""
        d = decoders[b]
        while not d.done:
            queued[b].append((action, d.kind))
            struct, pos = d.allowed()
            if d.steps >= max_steps or int(struct.sum()) + int(pos.sum()) != 1:
                return
            action = int(np.flatnonzero(struct)[0]) if struct.any() else N_STRUCT + int(np.flatnonzero(pos)[0])
            d.step(action)
        queued[b] = []  # finished by a forced action: nothing left to feed

    for b in range(B):
        advance(b, -1)
    while not all(d.done for d in decoders):
        live = [b for b, d in enumerate(decoders) if not d.done]
        n = min(len(queued[b]) for b in live)
        prev, kinds = np.full((B, n), STOP, np.int64), np.zeros((B, n), np.int64)
        for b in live:
            prev[b], kinds[b] = zip(*queued[b][:n])
            del queued[b][:n]
        logits = step_fn(prev, kinds)
        for b in live:
            if queued[b]:
                continue  # this row has more queued steps before its next decision
            d = decoders[b]
            struct, pos = d.allowed()
            if d.steps >= max_steps:
                action = _closing_action(struct, pos)
            else:
                scores = masked_log_softmax(logits[b], struct, pos)
                choice = scores
                used = d.used_starts if d.kind in (K_VALUE, K_ITEM) else ()
                if used:
                    # one span rarely answers two parameters of one call: prefer fresh spans
                    choice = scores.copy()
                    choice[[N_STRUCT + p for p in used]] -= REUSE_PENALTY
                repeated = d.starts_of_earlier_calls() if REPEAT_PENALTY and d.kind in (K_VALUE, K_ITEM) else ()
                if repeated:
                    choice = choice.copy() if choice is scores else choice
                    choice[[N_STRUCT + p for p in repeated]] -= REPEAT_PENALTY
                action = int(np.argmax(choice))
                if INFEASIBLE_FAVOURITE_STOPS and d.kind == K_CALL and struct[STOP] and d.named is None:
                    raw = logits[b]
                    favourite = max(d.r.tool_pos, key=lambda p: raw[N_STRUCT + p])
                    if not pos[favourite] and raw[N_STRUCT + favourite] > raw[STOP]:
                        action = STOP  # the tool the model would call cannot be called: no call
                done = d.calls_done()
                stopping = bool(done) and action == STOP
                unused = d.unused_numbers() if UNUSED_NUMBERS and stopping else set()
                parallel = d.unused_parallel_values() if PARALLEL_VALUES and stopping else {}
                if unused or parallel:
                    # a number or a parallel value the request says is still unused: one more
                    # call, kept only if it takes one of them (see `UNUSED_NUMBERS`, `PARALLEL_VALUES`)
                    choice = choice.copy() if choice is scores else choice
                    choice[STOP] = -np.inf
                    if np.isfinite(choice).any():
                        action = int(np.argmax(choice))
                        continued[b].append((done, float(logp[b] + scores[STOP])))
                        d.fresh_numbers, d.fresh_texts = unused, parallel
                elif RESCORE_STOPS and done and action != STOP and np.isfinite(scores[STOP]):
                    alternative = float(logp[b] + scores[STOP])
                    if stop_instead[b] is None or alternative > stop_instead[b][0]:
                        stop_instead[b] = (alternative, done)
                logp[b] += float(scores[action])
            d.step(action)
            advance(b, action)
    results = []
    for b, d in enumerate(decoders):
        alternative = stop_instead[b]
        cut = next(((stop_logp, done) for done, stop_logp in continued[b]
                    if done < len(d.covered) and not d.repeats_for_fresh_value(done)), None)
        kept = [done for done, _ in continued[b] if (cut is None or done < cut[1]) and done < len(d.covered)]
        if KEEP_ASKED_CALLS and alternative is not None and kept and alternative[1] <= max(kept):
            alternative = None  # a further call kept for an unused value: no stop before it
        if cut is not None and (alternative is None or alternative[1] > cut[1] or alternative[0] < cut[0]):
            alternative = cut  # the further call took no unused number: the answer stops before it
        if alternative is not None and (cut is not None or alternative[0] > logp[b]):
            results.append((d.calls(first=alternative[1]), alternative[0], d.steps))
        else:
            results.append((d.calls(), float(logp[b]), d.steps))
    return results


def decoder_inputs(prev_actions: np.ndarray) -> np.ndarray:
    """Output actions -> decoder input ids: -1 -> BOS, pointers shift past BOS (see modeling)."""
    from needle_core.callformat import BOS

    return np.where(prev_actions < 0, BOS, np.where(prev_actions >= N_STRUCT, prev_actions + 1, prev_actions))


def _closing_action(struct: np.ndarray, pos: np.ndarray) -> int:
    for a in (STOP, END, END_LIST, NULL, FALSE):
        if struct[a]:
            return a
    hits = np.flatnonzero(pos)
    return int(N_STRUCT + hits[-1]) if hits.size else int(np.flatnonzero(struct)[0])


# ---- targets for training ----------------------------------------------------------------------------
def encode_calls(decoder: CallDecoder, calls: list[dict], stats: dict | None = None,
                 unsure: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Actions (and the kind before each) that make ``decoder`` produce ``calls``.

    Optional arguments whose value the input cannot give are left out (counted in ``stats`` under
    ``dropped_optional``); a required one raises `DecodeError`. A left-out argument makes the next
    step of its object (another key, or the end) a choice the teacher did not make: ``unsure``,
    when given, collects the indices of those steps so that training can skip them instead of
    teaching the model to leave such arguments out.

    A value the input holds more than once can be copied from any copy the decoder allows at that
    step, and the choice matters later (an optional argument or an array item takes no start an
    earlier value used, where a fresh one is left): the copies are tried in order, and where a
    later value finds no copy left, the encoding is replayed from the start with the latest
    earlier choice that has another copy moved to it (a depth-first search, at most
    ``ENCODE_REPLAYS`` replays).
    """
    shared = {id(decoder): decoder, id(decoder.r): decoder.r, id(decoder.specs): decoder.specs}
    start = copy.deepcopy(decoder.__dict__, dict(shared))
    plan: list[int] = []
    for _ in range(ENCODE_REPLAYS):
        stats_try, unsure_try = dict(stats or {}), []
        copies = _Copies(plan)
        try:
            actions, kinds = _encode_calls(decoder, calls, stats_try, unsure_try, copies)
        except _NoCopyLeft:
            plan = copies.next_plan()
            if plan is None:
                raise DecodeError("the values cannot all be copied from the input in an order the decoder allows") from None
            decoder.__dict__.update(copy.deepcopy(start, dict(shared)))
            continue
        if stats is not None:
            for key, count in stats_try.items():  # set, not add: a Counter's update adds
                stats[key] = count
        if unsure is not None:
            unsure.extend(unsure_try)
        return actions, kinds
    raise DecodeError(f"no order of copies found in {ENCODE_REPLAYS} replays")


ENCODE_REPLAYS = 64


class _NoCopyLeft(DecodeError):
    """A value has copies in the input, but the decoder allows none of them at this step."""


class _Copies:
    """Which allowed copy each copied value of an encoding takes, by the order of the values:
    ``plan[i]`` for the i-th (0 past the plan), and how many copies each had, for `next_plan`."""

    def __init__(self, plan: list[int]):
        self.plan, self.counts = plan, []

    def choose(self, n: int) -> int:
        i = len(self.counts)
        self.counts.append(n)
        return self.plan[i] if i < len(self.plan) else 0

    def next_plan(self) -> list[int] | None:
        """The next plan of the depth-first search: the latest value with a copy left moves to it."""
        for i in range(len(self.counts) - 1, -1, -1):
            k = self.plan[i] if i < len(self.plan) else 0
            if k + 1 < self.counts[i]:
                return [self.plan[j] if j < len(self.plan) else 0 for j in range(i)] + [k + 1]
        return None


def _encode_calls(decoder: CallDecoder, calls: list[dict], stats: dict, unsure: list[int],
                  copies: _Copies) -> tuple[list[int], list[int]]:
    actions, kinds = [], []

    def emit(a: int, sure: bool = True) -> None:
        if not sure:
            unsure.append(len(actions))
        kinds.append(decoder.kind)
        actions.append(a)
        decoder.step(a)

    names = [s.name for s in decoder.specs]
    for call in calls:
        if call["name"] not in names:
            raise DecodeError(f"tool {call['name']!r} was not rendered")
        tool = names.index(call["name"])
        if not decoder.allowed()[1][decoder.r.tool_pos[tool]]:
            why = ("a required argument cannot be formed from the input" if not decoder.tool_feasible(tool)
                   else f"no call may follow here (max_calls={decoder.max_calls})")
            raise DecodeError(f"{why}: tool {call['name']!r}")
        emit(N_STRUCT + decoder.r.tool_pos[tool])
        arguments = call.get("arguments") or {}
        placing = (_sole_starts(decoder, decoder.specs[tool].parameters, arguments), copies)
        _encode_object(decoder, decoder.specs[tool].parameters, (), tool, arguments, emit, stats, placing)
    emit(STOP)
    return actions, kinds


def _encode_object(dec: CallDecoder, node: dict, path: tuple, tool: int, value: dict, emit, stats,
                   placing: tuple[set[int], _Copies]) -> None:
    inner, _ = primary_branch(node)
    props = inner.get("properties", {})
    required = set(inner.get("required", []))
    dropped = False  # an argument was just left out: the next key (or the end) stands in its place
    for key in props:
        if key not in value:
            continue
        p = dec.r.param_pos.get((tool, path + (key,)))
        struct, pos = dec.allowed()
        if p is None or not pos[p] or not _encodable(dec, props[key], path + (key,), tool, value[key]):
            if key in required:
                raise DecodeError(f"required argument {key!r} cannot be formed from the input")
            stats["dropped_optional"] = stats.get("dropped_optional", 0) + 1
            dropped = dropped or (p is not None and bool(pos[p]))  # the model could have chosen the key
            continue
        emit(N_STRUCT + p, sure=not dropped)
        dropped = False
        _encode_value(dec, props[key], path + (key,), tool, value[key], emit, stats, placing)
        stats["encoded_args"] = stats.get("encoded_args", 0) + 1
    emit(END, sure=not dropped)


def _encodable(dec: CallDecoder, node, path, tool, value) -> bool:
    try:
        _plan_value(dec, node, path, tool, value)
        return True
    except DecodeError:
        return False


def _plan_value(dec: CallDecoder, node: dict, path: tuple, tool: int, value: Any) -> None:
    """Raise DecodeError when ``value`` cannot be produced (checked before any action is emitted)."""
    inner, nullable = primary_branch(node)
    if value is None:
        if not nullable and "type" in inner:
            raise DecodeError("null not allowed")
        return
    options = enum_options(inner)
    if options is not None:
        if not any(v == value and type(v) is type(value) for _, v in dec.r.option_pos.get((tool, path), [])):
            raise DecodeError("option not rendered")
        return
    t = inner.get("type")
    if isinstance(value, bool):
        if t not in ("boolean", None):
            raise DecodeError("boolean not allowed")
        return
    if t == "array":
        if not isinstance(value, list) or len(value) > dec._array_cap(inner) or len(value) < inner.get("minItems", 0):
            raise DecodeError("array does not fit")
        for item in value:
            _plan_value(dec, inner.get("items", {}), path + (ITEMS,), tool, item)
        return
    if t == "object":
        if not isinstance(value, dict) or inner.get("properties") == {}:
            raise DecodeError("free-form objects are not encoded")
        for key in inner.get("required", []):
            if key not in value:
                raise DecodeError("missing required key")
            _plan_value(dec, inner["properties"][key], path + (key,), tool, value[key])
        return
    if _find_span(dec, inner, value) is None:
        raise DecodeError("value is not a span of the input")


def _find_span(dec: CallDecoder, node: dict, value: Any) -> tuple[int, int] | None:
    """The first span whose value equals ``value`` (exact text first, then case-insensitive)."""
    return next(iter(_matching_spans(dec, node, value)), None)


def _matching_spans(dec: CallDecoder, node: dict, value: Any) -> list[tuple[int, int]]:
    """The spans whose value equals ``value``, in text order: exact text before case-insensitive."""
    values = [(s, e, span_value(dec.r.span_text(s, e), node, dec.r.text_after(e))[1])
              for s, ends in dec.valid_spans(node).items() for e in ends]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [(s, e) for s, e, v in values if isinstance(v, (int, float)) and v == value]
    if not isinstance(value, str):
        return []
    exact = [(s, e) for s, e, v in values if v == value]
    return exact + [(s, e) for s, e, v in values
                    if isinstance(v, str) and v != value and v.lower().strip() == value.lower().strip()]


def _sole_starts(dec: CallDecoder, node: dict, value: Any) -> set[int]:
    """Where the input holds a value of ``value`` (a call's arguments) at one place only. A value
    with several copies is placed at another copy: decoding may have given an optional argument
    the only copy of its value while an equal value of another argument took a second copy, and
    an optional argument takes no start another argument used (`_fresh_value_left`)."""
    inner, _ = primary_branch(node)
    if isinstance(value, dict):
        props = inner.get("properties", {})
        return set().union(*(_sole_starts(dec, props[k], v) for k, v in value.items() if k in props))
    if isinstance(value, list):
        return set().union(*(_sole_starts(dec, inner.get("items", {}), item) for item in value))
    if isinstance(value, bool) or enum_options(inner) is not None or inner.get("type") not in ("string", "integer", "number"):
        return set()
    starts = {s for s, _ in _matching_spans(dec, inner, value)}
    return starts if len(starts) == 1 else set()


def _encode_value(dec: CallDecoder, node: dict, path: tuple, tool: int, value: Any, emit, stats,
                  placing: tuple[set[int], _Copies]) -> None:
    inner, _ = primary_branch(node)
    if value is None:
        return emit(NULL)
    options = enum_options(inner)
    if options is not None:
        for p, v in dec.r.option_pos[(tool, path)]:
            if v == value and type(v) is type(value):
                return emit(N_STRUCT + p)
    if isinstance(value, bool):
        return emit(TRUE if value else FALSE)
    t = inner.get("type")
    if t == "array":
        emit(LIST)
        for item in value:
            _encode_value(dec, inner.get("items", {}), path + (ITEMS,), tool, item, emit, stats, placing)
        return emit(END_LIST)
    if t == "object":
        return _encode_object(dec, inner, path, tool, value, emit, stats, placing)
    sole, copies = placing
    startable = dec.allowed()[1]
    spans = sorted((span for span in _matching_spans(dec, inner, value) if startable[span[0]]),
                   key=lambda span: span[0] in sole)  # stable: text order otherwise
    if not spans:
        raise _NoCopyLeft(f"no copy of {value!r} may start here")
    s, e = spans[copies.choose(len(spans))]
    emit(N_STRUCT + s)
    emit(N_STRUCT + e)
