"""Listed values: one call per value when a request lists several where a tool takes one.

"Calculate the mortgage for a term of 15, 20 and 30 years", "the winning percentage of the
Lakers and the Bulls", "UUIDs for 'LazarBeam', 'MrBeast', and 'Ninja'": the model reliably makes
the first call and often stops there, or repeats the first value in the next call. `fan_out`
adds, for a value of a call that stands in such a list, the same call with each listed value no
call used yet; `complete_lists` gives an array argument the rest of the list its items came from.

What counts as a list is narrow on purpose (checked against the recorded teacher answers with
``python -m training.rule_check runs/data/all.jsonl``: 4 of 5,337 one-call-per-tool answers get
a call added, 20 of 51 answers that call one tool several times are rebuilt from their first
call, 12 of 56 arrays of several copied values from their first item, none lengthened):
* values are joined by commas and one "and" / "&" before the last ("10, 20, 30" alone is a
  sequence); "or" offers a choice ("Paris or Rome"), not a list;
* the listed values have the value's shape: numbers beside a number, quoted text beside quoted
  text, capitalised words beside capitalised words (names, IDs) joined by "and" only ("Paris,
  France" is one place; "San Francisco, CA and Seattle, WA" pairs when the value is such a
  pair), and lower-case words only in lists of three or more, or two for an array ("navy,
  purple and maroon"; "gold and retrieve the ..." is two phrases);
* each listed value ends at a word boundary ("13:31" is not a list of 13 and 31).
"""
from __future__ import annotations

import itertools
import re
from typing import Any, Callable

_LINK = r"\s*,\s*(?:and\s+)?|\s+(?:and|&)\s+"
_LINK_AFTER = re.compile(_LINK, re.IGNORECASE)
_LINK_BEFORE = re.compile(f"(?:{_LINK})$", re.IGNORECASE)
_AND = re.compile(r"\band\b|&", re.IGNORECASE)
_NUMBER_AFTER = re.compile(r"[$€£]?\s?([+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)")
_NUMBER_BEFORE = re.compile(r"([+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)$")
_QUOTED_AFTER = re.compile(r"(['\"`])([^'\"`\n]{1,80})\1")
_QUOTED_BEFORE = re.compile(r"(['\"`])([^'\"`\n]{1,80})\1$")
_WORD_AFTER = re.compile(r"[^\s,.;:!?()\[\]'\"`]+")
_WORD_BEFORE = re.compile(r"[^\s,.;:!?()\[\]'\"`]+$")
_ENDS_VALUE = re.compile(r"\s|[,.;!?)\]'\"`]|$")

# Words that start a new phrase rather than name a listed value.
_PHRASE_WORDS = frozenset("""
a an the this that these those its their his her my our your some any all each both every other another
same such in on at for from with to of by about into as than per via is are was were be been being and or
but also then so please me you i it we they them us what which who whom how when where why
get find give tell show list calculate compute check make do does can could would will should may might
must provide retrieve fetch search look send create update delete identify analyze compare use using
including specifically especially respectively
""".split())


def _shape(text: str, start: int, end: int, numeric: bool) -> str:
    if numeric:
        return "number"
    if 0 < start and end < len(text) and text[start - 1] in "'\"`" and text[end] == text[start - 1]:
        return "quoted"
    return "lower" if text[start:end][:1].islower() else "capital"


def _fits(word: str, shape: str) -> bool:
    if word.lower() in _PHRASE_WORDS:
        return False
    if shape == "lower":
        return word[:1].islower()
    return word[:1].isupper() or word[:1].isdigit()


def _words_after(text: str, at: int, shape: str, n_words: int) -> tuple[int, int] | None:
    """The listed value that starts at ``at``: ``n_words`` words for lower-case values, a run of
    up to ``n_words + 2`` capitalised words otherwise."""
    picked, pos = [], at
    limit = n_words if shape == "lower" else n_words + 2
    while len(picked) < limit:
        m = _WORD_AFTER.match(text, pos)
        if not m or not _fits(m.group(), shape):
            break
        picked.append(m)
        gap = re.match(r" +", text[m.end():m.end() + 4])
        if not gap:
            break
        pos = m.end() + gap.end()
    if not picked or (shape == "lower" and len(picked) != n_words):
        return None
    return picked[0].start(), picked[-1].end()


def _words_before(text: str, at: int, shape: str, n_words: int) -> tuple[int, int] | None:
    """The listed value that ends at ``at`` (mirror of `_words_after`)."""
    picked, pos = [], at
    limit = n_words if shape == "lower" else n_words + 2
    while len(picked) < limit:
        m = _WORD_BEFORE.search(text, max(0, pos - 80), pos)
        if not m or not _fits(m.group(), shape):
            break
        picked.append(m)
        if m.start() == 0 or text[m.start() - 1] != " ":
            break
        pos = m.start() - 1
    if not picked or (shape == "lower" and len(picked) != n_words):
        return None
    return picked[-1].start(), picked[0].end()


def _next_value(text: str, at: int, shape: str, n_words: int, forward: bool,
                paired: bool = False) -> tuple[tuple[int, int], int] | None:
    """(span of the listed value beside a link, where to look for the next link) or None."""
    if shape == "number":
        m = _NUMBER_AFTER.match(text, at) if forward else _NUMBER_BEFORE.search(text, max(0, at - 40), at)
        if not m:
            return None
        span = m.span(1)
        return span, (span[1] if forward else m.start(1) - (1 if m.start(1) and text[m.start(1) - 1] in "$€£" else 0))
    if shape == "quoted":
        m = _QUOTED_AFTER.match(text, at) if forward else _QUOTED_BEFORE.search(text, max(0, at - 90), at)
        return (m.span(2), m.end() if forward else m.start()) if m else None
    span = _words_after(text, at, shape, n_words) if forward else _words_before(text, at, shape, n_words)
    if span and paired:  # the second half of "City, ST"
        if forward:
            comma = re.match(r", ?", text[span[1]:span[1] + 2])
            half = comma and _words_after(text, span[1] + comma.end(), shape, n_words)
            span = (span[0], half[1]) if half else None
        else:
            comma = re.search(r", ?$", text[max(0, span[0] - 2):span[0]])
            half = comma and _words_before(text, span[0] - len(comma.group()), shape, n_words)
            span = (half[0], span[1]) if half else None
    return (span, span[1] if forward else span[0]) if span else None


def listed_with(text: str, start: int, end: int, numeric: bool, in_array: bool = False) -> list[tuple[int, int]]:
    """Character spans of the values listed together with ``text[start:end]`` (not itself).
    ``in_array``: the argument asks for a list (an array, a comma-separated string), so two
    lower-case words make a list too, and commas join capitalised names ("EUR, GBP and CHF")."""
    shape = _shape(text, start, end, numeric)
    n_words = len(text[start:end].split())
    paired = shape == "capital" and ", " in text[start:end]  # "San Francisco, CA" and "Seattle, WA"
    left, right = (start - 1, end + 1) if shape == "quoted" else (start, end)
    if shape == "number" and start and text[start - 1] in "$€£":
        left = start - 1
    found, ands = [], 0

    def walk(pos: int, forward: bool) -> None:
        nonlocal ands
        while len(found) < 16:
            m = (_LINK_AFTER.match(text, pos, min(len(text), pos + 12)) if forward
                 else _LINK_BEFORE.search(text, max(0, pos - 12), pos))
            if not m:
                return
            has_and = bool(_AND.search(m.group()))
            # "and" comes once, before the last value; commas join capitalised words in other
            # ways too ("Paris, France"), so names are listed by "and" alone, unless the argument
            # asks for a list ("EUR, GBP and CHF" for an array)
            if (has_and and ands) or (not has_and and ((shape == "capital" and not in_array) or (forward and ands))):
                return
            nxt = _next_value(text, m.end() if forward else m.start(), shape, n_words, forward, paired)
            if not nxt:
                return
            ands += has_and
            found.append(nxt[0])
            pos = nxt[1]

    before = _LINK_BEFORE.search(text, max(0, left - 12), left)
    if not (before and _AND.search(before.group())):  # after "... and X", X ends the list
        walk(right, forward=True)
    walk(left, forward=False)
    if not ands or (shape == "lower" and len(found) < (1 if in_array else 2)):
        return []
    # a listed value starts and ends on a word boundary, and a name is listed with names, a code
    # with codes ("New York and 4000 sq ft in Los Angeles": 4000 is no place)
    return sorted((a, b) for a, b in found
                  if _ENDS_VALUE.match(text, b) and (a == 0 or not text[a - 1].isalnum())
                  and (shape != "capital" or text[a].isdigit() == text[start].isdigit()))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def scalar_values(value: Any) -> set:
    """Every scalar inside an argument value (list items, object fields), numbers compared as such."""
    if isinstance(value, dict):
        return set().union(*map(scalar_values, value.values()))
    if isinstance(value, list):
        return set().union(*map(scalar_values, value))
    if _is_number(value):
        return {("number", float(value))}
    return {(type(value).__name__, value)}


def complete_lists(call: dict, arrays: dict[str, tuple[int, list[tuple[str, int, int, Callable]]]]) -> dict:
    """``call`` with each array argument whose items were all copied from one list in the text
    completed with that list's other values, in the text's order. ``arrays`` maps an argument to
    (maxItems, the anchors of its items, as in `fan_out`)."""
    args = dict(call["arguments"])
    for key, (max_items, items) in arrays.items():
        value = args.get(key)
        if not isinstance(value, list) or not items or len(items) != len(value):
            continue
        text = items[0][0]
        if any(t != text for t, *_ in items):
            continue
        spans = {(start, end): item for (_, start, end, _), item in zip(items, value)}
        others = scalar_values([v for k, v in args.items() if k != key])
        for (_, start, end, to_value), item in zip(items, value):
            for a, b in listed_with(text, start, end, _is_number(item), in_array=True):
                if any(a < e and s < b for s, e in spans):
                    continue
                new = to_value(text[a:b], text[b:b + 12])
                if new is not None and not scalar_values(new) & (others | scalar_values(list(spans.values()))):
                    spans[(a, b)] = new
        if len(value) < len(spans) <= max_items:
            args[key] = [spans[span] for span in sorted(spans)]
    return {**call, "arguments": args}


def join_lists(call: dict, anchors: dict[str, tuple[str, int, int, Callable]],
               separators: dict[str, str]) -> tuple[dict, dict[str, list[str]]]:
    """(``call`` with each text argument that ``separators`` names set to the values listed with
    its own, joined by its separator; the listed values of each argument so joined). For a
    parameter that takes a list in one string ("a comma-separated list of IDs"): "IDs 12345, 67890
    and 24680" is one call with "12345,67890,24680", not three calls."""
    args, joined = dict(call["arguments"]), {}
    for key, separator in separators.items():
        if key not in anchors or not isinstance(args.get(key), str):
            continue
        text, start, end, _ = anchors[key]
        found = listed_with(text, start, end, numeric=bool(re.fullmatch(r"[\d.]+", text[start:end])), in_array=True)
        if found:
            joined[key] = [text[a:b] for a, b in sorted(found + [(start, end)])]
            args[key] = separator.join(joined[key])
    return {**call, "arguments": args}, joined


def _unused_listed_values(call: dict, spans: dict, used: set) -> dict[str, list[Any]]:
    """Per argument of ``call``, the values listed with its own that no call uses. A list that
    gives two arguments of the call ("the GCD of 12 and 18") is consumed, not listed; a text
    that holds or is held by a used text ("Mauryan Empire" beside "Mauryan") is the same value."""
    listed = {key: listed_with(text, start, end, _is_number(call["arguments"].get(key)))
              for key, (text, start, end, _) in spans.items()}
    consumed = {key for key, found in listed.items() for other, (_, start, end, _) in spans.items()
                if other != key and any(a < end and start < b for a, b in found)}
    used_texts = [v.casefold() for kind, v in used if kind == "str"]
    lists = {}
    for key, found in listed.items():
        text, _, _, to_value = spans[key]
        values = []
        for a, b in found if key not in consumed else ():
            value = to_value(text[a:b], text[b:b + 12])
            if value is None or scalar_values(value) <= used | scalar_values(values):
                continue
            if isinstance(value, str) and any(value.casefold() in u or u in value.casefold() for u in used_texts):
                continue
            values.append(value)
        if values:
            lists[key] = values
    return lists


def fan_out(calls: list[dict], anchors: list[dict[str, tuple[str, int, int, Callable]]], max_calls: int) -> list[dict]:
    """``calls`` plus, after each, its copies for the listed values no call uses yet.

    ``anchors[i]`` maps a top-level argument of ``calls[i]`` that was copied from the text to
    (text, start, end, to_value); ``to_value(span_text, text_after)`` returns the argument value
    for another span, or None where the schema refuses it. One listed argument gives a call per
    value; several give every combination ("Lakers and Bulls in 2018 and 2020": four calls),
    or, when the request says "respectively" and the lists are as long, one call per position.
    """
    used = set().union(*(scalar_values(c["arguments"]) for c in calls)) if calls else set()
    out: list[dict] = []
    budget = max_calls - len(calls)
    for call, spans in zip(calls, anchors):
        out.append(call)
        lists = _unused_listed_values(call, spans, used)
        if not lists or budget <= 0:
            continue
        keys = list(lists)
        respectively = any("respectively" in spans[k][0].lower() for k in keys)
        if respectively and len(keys) > 1 and len({len(v) for v in lists.values()}) == 1:
            combos = list(zip(*lists.values()))
        else:
            combos = list(itertools.product(*[[call["arguments"][k]] + lists[k] for k in keys]))[1:]
        for combo in combos[:budget]:
            out.append({"name": call["name"], "arguments": {**call["arguments"], **dict(zip(keys, combo))}})
            used |= scalar_values(list(combo))
        budget -= min(len(combos), budget)
    return out
