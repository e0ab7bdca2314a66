"""Label-preserving augmentation of canonical examples.

About 10k recorded examples are too few for the student to learn *which* tool and *which* span,
rather than memorising the few tools it has seen. Each transform below changes the input in a
way whose correct answer is known exactly, so the new label is as trustworthy as the old one:

- **distractors**: extra tools from the Seal-Tools pool, half drawn at random and half "hard"
  (the same Seal-Tools field as a called tool, or another tool of the same source); tools whose
  name or description is close to a called tool are never used, since they might be a second
  right answer;
- **negative**: the request with only unrelated tools (different field, no shared name word
  with the request) -> ``calls: []``;
- **rename**: tool names and parameter keys restyled (snake_case, camelCase or opaque ids, as
  ToolRL does) consistently in tools, history and calls; names the conversation mentions are
  kept;
- **shuffle**: tool order and property order;
- **substitute**: a string argument that appears literally in the conversation is replaced, in
  the text and in every argument, by another value of the same kind (same parameter name and
  shape, e.g. a city for a city) seen elsewhere in the data;
- **merge**: two single-call requests joined with " and also " / "; then " -> two parallel calls;
- **fan_out**: one argument given two or three values ("Paris and Tokyo") -> the same tool called once per value;
- **repeat**: the request said again with other values (numbers, and maybe a string of a known
  kind), joined as in merge -> the same tool called twice, several arguments differing.

Every output passes `validate_example` (which runs `validate_call`); a transform that cannot
apply to an example, or whose result fails, is counted in ``stats`` and another is tried.
`augment(examples, factor, seed, pool)` is deterministic for a given seed.
"""
from __future__ import annotations

import copy
import json
import random
import re
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from needle_core.schema import name_words
from training.data import validate_example

STOPWORDS = frozenset((
    "the", "and", "for", "with", "from", "that", "this", "what", "when", "where", "which", "who", "how",
    "are", "was", "were", "get", "set", "can", "you", "your", "please", "about", "into", "onto", "will",
    "would", "could", "should", "need", "want", "like", "find", "tell", "give", "show", "make", "use",
    "using", "some", "any", "all", "one", "two", "its", "his", "her", "their", "our", "out", "new",
    "information", "info", "data", "details", "api", "tool",
))

# variant kinds and their weights
KINDS = ("variant", "negative", "merge", "fan_out", "repeat", "zip", "restate")
KIND_WEIGHTS = (0.50, 0.14, 0.08, 0.10, 0.08, 0.10, 0.0)  # restate: off until a run measures it
MAX_TOOLS = 8  # keeps the rendered input inside the model's 512 positions


# ---- words --------------------------------------------------------------------------------------

def content_words(text: str) -> frozenset[str]:
    """Lower-case content words (plural 's' dropped) for cheap relatedness tests."""
    words = set()
    for w in name_words(text):
        if len(w) < 3 or w in STOPWORDS or w.isdigit():
            continue
        words.add(w[:-1] if w.endswith("s") and len(w) > 3 else w)
    return frozenset(words)


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


# ---- the distractor pool ------------------------------------------------------------------------

@dataclass
class ToolPool:
    """Canonical tools with a field each (Seal-Tools' 146 fields), indexed for sampling."""

    tools: list[dict]
    fields: list[str]
    name_words: list[frozenset] = field(init=False)
    all_words: list[frozenset] = field(init=False)
    by_field: dict[str, list[int]] = field(init=False)
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.name_words = [content_words(t["name"]) for t in self.tools]
        self.all_words = [content_words(t["name"] + " " + t.get("description", "")) for t in self.tools]
        self.by_field = defaultdict(list)
        for i, f in enumerate(self.fields):
            self.by_field[f].append(i)
        self.index = {t["name"]: i for i, t in enumerate(self.tools)}

    def field_of(self, name: str) -> str | None:
        i = self.index.get(name)
        return self.fields[i] if i is not None else None

    def __len__(self) -> int:
        return len(self.tools)


@lru_cache(maxsize=4)
def _load_pool(path: str) -> ToolPool:
    from training.importers import load_seal_tools

    entries = load_seal_tools(path)
    return ToolPool([t for t, _ in entries.values()], [f for _, f in entries.values()])


def load_tool_pool(path: str | Path | None = None) -> ToolPool:
    """The Seal-Tools pool (tool.jsonl), converted once and cached in memory. ``path`` is the
    shared data folder (default ``../shared/data``), its seal_tools folder or tool.jsonl."""
    from training.importers import DEFAULT_DATA_DIR, seal_tool_file

    return _load_pool(str(seal_tool_file(path or DEFAULT_DATA_DIR).resolve()))


def pool_from_examples(examples: list[dict]) -> ToolPool:
    """A pool of the examples' own tools (field = source), for when tool.jsonl is not at hand."""
    seen: dict[str, tuple[dict, str]] = {}
    for ex in examples:
        for t in ex["tools"]:
            seen.setdefault(t["name"], (t, ex["source"]))
    return ToolPool([t for t, _ in seen.values()], [f for _, f in seen.values()])


# ---- helpers ------------------------------------------------------------------------------------

def _user_only(ex: dict) -> bool:
    return len(ex["messages"]) == 1 and ex["messages"][0]["role"] == "user"


def _text(ex: dict) -> str:
    return "\n".join(m["content"] for m in ex["messages"] if m["role"] in ("user", "system", "tool"))


def _too_close(words: tuple[frozenset, frozenset], golds: list[tuple[frozenset, frozenset]]) -> bool:
    """A candidate distractor that might be a second right answer (similar name or description)."""
    name, desc = words
    return any(_jaccard(name, gn) >= 0.5 or _jaccard(desc, gd) >= 0.5 or (name and name <= gn) for gn, gd in golds)


def _reorder_properties(tool: dict, rng: random.Random) -> dict:
    params = tool["parameters"]
    keys = list(params["properties"])
    rng.shuffle(keys)
    new_params = dict(params)
    new_params["properties"] = {k: params["properties"][k] for k in keys}
    new_params["required"] = [k for k in keys if k in set(params["required"])]
    return {**tool, "parameters": new_params}


@dataclass
class _Context:
    pool: ToolPool
    source_tools: dict[str, list[dict]]
    value_bank: dict[tuple, list[str]]
    singles: list[dict]
    stats: Counter


# ---- transforms (each returns a new example, or None when it does not apply) ----------------------

def _unrelated(words: tuple[frozenset, frozenset], request: frozenset) -> bool:
    """No name word in the request and at most one description word: it cannot be what was asked."""
    name, desc = words
    return not (name & request) and len(desc & request) <= 1


def add_distractors(ex: dict, ctx: _Context, rng: random.Random, k: int | None = None) -> dict | None:
    """Add 1-3 tools nobody calls: a mix of random pool tools and same-field / same-source ones.

    A distractor must never be a second right answer: it may not resemble a declared tool, nor
    name something the request asks for that the declared tools do not (API-Bank's answer is
    ToolSearcher exactly because no fitting tool is declared). Where the answer is "no call" it
    must be unrelated to the request altogether."""
    room = MAX_TOOLS - len(ex["tools"])
    if room <= 0:
        return None
    k = min(k or rng.randint(1, 3), room)
    names = {t["name"] for t in ex["tools"]}
    golds = [(content_words(t["name"]), content_words(t["name"] + " " + t.get("description", "")))
             for t in ex["tools"]]
    request = content_words(_text(ex))
    declared = frozenset().union(*(g[0] for g in golds))
    gold_fields = {f for f in (ctx.pool.field_of(n) for n in names) if f}
    hard: list[dict] = [ctx.pool.tools[i] for f in sorted(gold_fields) for i in ctx.pool.by_field.get(f, [])]
    hard += ctx.source_tools.get(ex["source"], [])
    chosen: list[dict] = []
    for _ in range(k * 6):  # a few tries per slot: candidates are filtered
        if len(chosen) == k:
            break
        if hard and rng.random() < 0.5:
            cand = rng.choice(hard)
        else:
            cand = ctx.pool.tools[rng.randrange(len(ctx.pool))]
        words = (content_words(cand["name"]), content_words(cand["name"] + " " + cand.get("description", "")))
        if (cand["name"] in names or _too_close(words, golds) or not (words[0] & request) <= declared
                or (not ex["calls"] and not _unrelated(words, request))):
            continue
        chosen.append(cand)
        names.add(cand["name"])
    if not chosen:
        return None
    new = copy.deepcopy(ex)
    new["tools"] = new["tools"] + copy.deepcopy(chosen)
    return new


def make_negative(ex: dict, ctx: _Context, rng: random.Random) -> dict | None:
    """The same request with 1-4 unrelated pool tools and no call."""
    if not _user_only(ex):
        return None
    request = content_words(ex["messages"][0]["content"])
    avoid_fields = {f for f in (ctx.pool.field_of(t["name"]) for t in ex["tools"]) if f}
    golds = [(content_words(t["name"]), content_words(t["name"] + " " + t.get("description", "")))
             for t in ex["tools"]]
    want, chosen, names = rng.randint(1, 4), [], set()
    for _ in range(want * 8):
        if len(chosen) == want:
            break
        i = rng.randrange(len(ctx.pool))
        tool, words = ctx.pool.tools[i], (ctx.pool.name_words[i], ctx.pool.all_words[i])
        if (tool["name"] in names or ctx.pool.fields[i] in avoid_fields or not _unrelated(words, request)
                or _too_close(words, golds)):
            continue
        chosen.append(tool)
        names.add(tool["name"])
    if not chosen:
        return None
    return {**copy.deepcopy(ex), "tools": copy.deepcopy(chosen), "calls": []}


def shuffle_order(ex: dict, ctx: _Context, rng: random.Random) -> dict:
    """Shuffle tool order and each tool's property order (the label does not depend on either)."""
    new = copy.deepcopy(ex)
    rng.shuffle(new["tools"])
    new["tools"] = [_reorder_properties(t, rng) for t in new["tools"]]
    return new


def _restyle(name: str, style: str, rng: random.Random) -> str:
    words = name_words(name) or ["x"]
    if style == "snake":
        return "_".join(words)
    if style == "camel":
        return words[0] + "".join(w.capitalize() for w in words[1:])
    alphabet = string.ascii_letters + string.digits
    return rng.choice(string.ascii_letters) + "".join(rng.choice(alphabet) for _ in range(rng.randint(4, 11)))


def _mentioned(name: str, text: str) -> bool:
    """Does the conversation refer to this identifier (``ID_SOCIO``, ``get_weather``)? Plain
    words (``location``) are ordinary language, not references, and may be renamed."""
    if not re.search(r"[_.\d]|[a-z][A-Z]", name):
        return False
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text, re.IGNORECASE) is not None


def rename(ex: dict, ctx: _Context, rng: random.Random) -> dict | None:
    """Restyle tool names and top-level parameter keys, consistently everywhere."""
    from needle_core.schema import TOOL_NAME_RE

    style = rng.choices(("snake", "camel", "opaque"), (0.4, 0.4, 0.2))[0]
    text = "\n".join(m["content"] for m in ex["messages"])
    tool_map: dict[str, str] = {}
    key_maps: dict[str, dict[str, str]] = {}
    taken = {t["name"] for t in ex["tools"]}
    for tool in ex["tools"]:
        old = tool["name"]
        new = _restyle(old, style, rng)
        if new != old and new not in taken and TOOL_NAME_RE.match(new) and not _mentioned(old, text):
            tool_map[old] = new
            taken.add(new)
        keys = list(tool["parameters"]["properties"])
        kmap: dict[str, str] = {}
        for key in keys:
            new_key = _restyle(key, style, rng)
            if new_key != key and new_key not in keys and new_key not in kmap.values() and not _mentioned(key, text):
                kmap[key] = new_key
        key_maps[old] = kmap
    if not tool_map and not any(key_maps.values()):
        return None

    def rename_call(call: dict) -> None:
        kmap = key_maps.get(call["name"], {})
        call["arguments"] = {kmap.get(k, k): v for k, v in call["arguments"].items()}
        call["name"] = tool_map.get(call["name"], call["name"])

    new = copy.deepcopy(ex)
    for tool in new["tools"]:
        kmap = key_maps[tool["name"]]
        params = tool["parameters"]
        params["properties"] = {kmap.get(k, k): v for k, v in params["properties"].items()}
        params["required"] = [kmap.get(k, k) for k in params["required"]]
        tool["name"] = tool_map.get(tool["name"], tool["name"])
    for msg in new["messages"]:
        for call in msg.get("tool_calls") or []:
            rename_call(call)
        if msg["role"] == "tool" and msg.get("name"):
            msg["name"] = tool_map.get(msg["name"], msg["name"])
    for call in new["calls"]:
        rename_call(call)
    return new


# value substitution ---------------------------------------------------------------------------

def _shape(value: str) -> str:
    if re.fullmatch(r"[^@\s]+@[^@\s]+\.\w+", value):
        return "email"
    if re.match(r"https?://", value):
        return "url"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return "date"
    if re.fullmatch(r"[\d\s().+:-]+", value):
        return "digits"
    if " " not in value and re.search(r"\d", value) and re.search(r"[A-Za-z]", value):
        return "code"
    if all(w[:1].isupper() for w in value.split()):
        return "title"
    return "text"


def _value_key(param: str, value: str) -> tuple[str, str]:
    return (re.sub(r"[^a-z0-9]", "", param.lower()), _shape(value))


def _word_pattern(value: str) -> re.Pattern:
    left = r"(?<![A-Za-z0-9])" if value[:1].isalnum() else ""
    right = r"(?![A-Za-z0-9])" if value[-1:].isalnum() else ""
    return re.compile(left + re.escape(value) + right)


def _substitutable(ex: dict) -> list[tuple[str, str]]:
    """(parameter, value) pairs that can be swapped for another value of their kind: string
    arguments found literally in the user's words that name a specific thing (a name, code,
    number, date, address or phrase), not a single common word, an enum option or an option the
    parameter's description lists (``setting_type="location"`` is a choice, not a place)."""
    user = "\n".join(m["content"] for m in ex["messages"] if m["role"] == "user")
    props = {t["name"]: t["parameters"]["properties"] for t in ex["tools"]}
    out = []
    for call in ex["calls"]:
        for key, value in call["arguments"].items():
            if not isinstance(value, str) or len(value) < 3 or value.strip() != value:
                continue
            schema = props.get(call["name"], {}).get(key, {})
            if "enum" in schema or value.lower() in str(schema.get("description", "")).lower():
                continue
            if _shape(value) == "text" and " " not in value:
                continue
            if _word_pattern(value).search(user):
                out.append((key, value))
    return out


def build_value_bank(examples: list[dict]) -> dict[tuple, list[str]]:
    """Literal string argument values by (parameter name, shape): the replacements for `substitute`."""
    bank: dict[tuple, set[str]] = defaultdict(set)
    for ex in examples:
        for key, value in _substitutable(ex):
            bank[_value_key(key, value)].add(value)
    return {k: sorted(v) for k, v in bank.items() if len(v) >= 2}


def _replace_everywhere(obj: Any, pattern: re.Pattern, new: str) -> Any:
    if isinstance(obj, str):
        return pattern.sub(lambda _: new, obj)
    if isinstance(obj, list):
        return [_replace_everywhere(v, pattern, new) for v in obj]
    if isinstance(obj, dict):
        return {k: _replace_everywhere(v, pattern, new) for k, v in obj.items()}
    return obj


def substitute(ex: dict, ctx: _Context, rng: random.Random) -> dict | None:
    """Swap one literal argument value for another of its kind, in the text and every argument."""
    candidates = _substitutable(ex)
    rng.shuffle(candidates)
    everything = json.dumps([ex["messages"], ex["calls"]], ensure_ascii=False)
    for key, old in candidates:
        pattern = _word_pattern(old)
        # every occurrence, in any letter case, must be an exact one, so one swap covers all
        if len(re.findall(re.escape(old), everything, re.IGNORECASE)) != len(pattern.findall(everything)):
            continue
        options = [v for v in ctx.value_bank.get(_value_key(key, old), [])
                   if v != old and v.lower() not in everything.lower() and old.lower() not in v.lower()]
        if not options:
            continue
        new_value = rng.choice(options)
        new = copy.deepcopy(ex)
        for msg in new["messages"]:  # text and argument values only, never names or ids
            msg["content"] = _replace_everywhere(msg["content"], pattern, new_value)
            for call in msg.get("tool_calls") or []:
                call["arguments"] = _replace_everywhere(call["arguments"], pattern, new_value)
        for call in new["calls"]:
            call["arguments"] = _replace_everywhere(call["arguments"], pattern, new_value)
        return new
    return None


# merging --------------------------------------------------------------------------------------

_STARTERS = frozenset((
    "add", "book", "calculate", "can", "check", "convert", "could", "create", "delete", "do", "find",
    "get", "give", "help", "how", "i'd", "i'll", "let", "list", "look", "make", "play", "please",
    "recommend", "remind", "retrieve", "search", "send", "set", "show", "tell", "translate", "update",
    "what", "when", "where", "which", "who", "why", "will", "would",
))


def _join(a: str, b: str, rng: random.Random) -> str:
    """Two requests as one: "A and also b" / "A; then b" (a question ends with "? Also, b")."""
    a, b = a.strip(), b.strip()
    first = b.split(" ", 1)[0]
    if first.lower().strip(",") in _STARTERS and first != "I":
        b = b[0].lower() + b[1:]
    if a.endswith("?"):
        return f"{a} Also, {b}"
    return a.rstrip(".!") + rng.choice((" and also ", "; then ")) + b


def merge(ex: dict, ctx: _Context, rng: random.Random) -> dict | None:
    """Join this single-call request with another into one request with both calls."""
    if not (_user_only(ex) and len(ex["calls"]) == 1) or len(ctx.singles) < 2:
        return None
    names = {t["name"]: t for t in ex["tools"]}
    for _ in range(8):
        other = rng.choice(ctx.singles)
        if other["id"] == ex["id"] or len(ex["tools"]) + len(other["tools"]) > MAX_TOOLS:
            continue
        if any(t["name"] in names and names[t["name"]] != t for t in other["tools"]):
            continue  # same name, different schema: the label would be ambiguous
        new = copy.deepcopy(ex)
        new["messages"] = [{"role": "user", "content": _join(ex["messages"][0]["content"],
                                                             other["messages"][0]["content"], rng)}]
        new["tools"] = new["tools"] + [copy.deepcopy(t) for t in other["tools"] if t["name"] not in names]
        new["calls"] = new["calls"] + copy.deepcopy(other["calls"])
        if other["source"] != ex["source"]:
            new["source"] = f"{ex['source']}+{other['source']}"
        if other["teacher"] != ex["teacher"]:
            new["teacher"] = f"{ex['teacher']} + {other['teacher']}"
        new["id"] = f"{ex['id']}+{other['id']}"
        return new
    return None


# fan-out: one tool, several values -------------------------------------------------------------

def _fan_out_candidates(ex: dict, user: str) -> list[tuple[str, Any]]:
    """Arguments whose value stands exactly once in the request: strings of a known kind, numbers."""
    call = ex["calls"][0]
    out = [(k, v) for k, v in _substitutable(ex) if len(_word_pattern(v).findall(user)) == 1]
    out += [(key, value) for key, value in call["arguments"].items() if _lone_number(value, user)]
    return out


def _lone_number(value: Any, text: str) -> bool:
    """A non-negative number argument written exactly once in ``text``: one edit of the text changes it."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            and len(_word_pattern(str(value)).findall(text)) == 1)


def _other_values(key: str, value: Any, ctx: _Context, rng: random.Random, n: int, text: str) -> list:
    if isinstance(value, str):
        options = [v for v in ctx.value_bank.get(_value_key(key, value), []) if v != value and v.lower() not in text.lower()]
        return rng.sample(options, n) if len(options) >= n else []
    if isinstance(value, int):
        pool = [v for v in range(1, 200) if v != value and str(v) not in text]
        return rng.sample(pool, n)
    return [round(value * rng.uniform(0.3, 3.0), 1) or 1.5 for _ in range(n)]


def _spoken_list(parts: list[str]) -> str:
    """``["a"]`` -> "a", ``["a", "b"]`` -> "a and b", ``["a", "b", "c"]`` -> "a, b and c"."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def fan_out(ex: dict, ctx: _Context, rng: random.Random) -> dict | None:
    """One call -> the same tool called for two or three values of one argument.

    "weather in Paris" becomes "weather in Paris and Tokyo" with one call per city: BFCL's
    parallel category asks exactly this, and the recorded sets hardly ever do.
    """
    if not (_user_only(ex) and len(ex["calls"]) == 1 and len(ex["messages"]) == 1):
        return None
    user = ex["messages"][0]["content"]
    candidates = _fan_out_candidates(ex, user)
    if not candidates:
        return None
    key, value = rng.choice(candidates)
    extra = _other_values(key, value, ctx, rng, rng.choice((1, 1, 2)), user)
    if not extra or len({str(v) for v in extra}) < len(extra):
        return None
    spelled = [str(v) for v in [value] + extra]
    joined = _spoken_list(spelled)
    new = copy.deepcopy(ex)
    new["messages"][0]["content"] = _word_pattern(str(value)).sub(lambda _: joined, user, count=1)
    base = new["calls"][0]
    new["calls"] = [base] + [{**copy.deepcopy(base), "arguments": {**base["arguments"], key: v}} for v in extra]
    return new


_AGAIN = ("{request}, then do the same with {values}.", "{request}. Also for {values}.",
          "{request}, and again with {values}.", "{request}. Repeat it with {values}.")


def zip_values(ex: dict, ctx: _Context, rng: random.Random) -> dict | None:
    """One call -> the same tool called again with two arguments changed together, said compactly:
    "20 minutes of Taylor Swift" becomes "20 and 15 minutes of Taylor Swift and Maroon 5
    respectively", or the change is said after the request ("..., then do the same with Maroon 5
    and 15"). Each later call's values are other spans of the one request: BFCL's parallel
    requests are worded like this, and neither fan_out nor repeat says it."""
    if not (_user_only(ex) and len(ex["calls"]) == 1 and len(ex["messages"]) == 1):
        return None
    user = ex["messages"][0]["content"]
    candidates = list({k: (k, v) for k, v in _fan_out_candidates(ex, user)}.values())
    if not candidates:
        return None
    chosen = rng.sample(candidates, min(2, len(candidates)))
    spans = sorted((_word_pattern(str(v)).search(user).span(), k, v) for k, v in chosen)
    if len(spans) == 2 and spans[0][0][1] > spans[1][0][0]:
        return None  # one value inside the other
    respectively = len(spans) == 2 and rng.random() < 0.5
    n = rng.choice((1, 1, 2)) if respectively else 1
    extra = {k: _other_values(k, v, ctx, rng, n, user) for _, k, v in spans}
    said = [str(w) for ws in extra.values() for w in ws] + [str(v) for _, _, v in spans]
    if any(len(ws) < n for ws in extra.values()) or len(set(said)) < len(said) or any(
            a != b and a in b for a in said for b in said) or any(str(w) in user for ws in extra.values() for w in ws):
        return None  # every value must be a span of its own
    cut = len(user.rstrip())  # the request without its closing mark (never inside a value)
    while cut > spans[-1][0][1] and user[cut - 1] in ".!?":
        cut -= 1
    text, mark = user[:cut], user[cut:].strip()
    if respectively:
        for (start, end), k, v in reversed(spans):
            quote = user[start - 1:start] if start and user[start - 1:start] in "\"'" else ""
            if quote and user[end:end + 1] == quote:  # "A" -> "A" and "B", each value in its quotes
                start, end = start - 1, end + 1
            items = [f"{quote}{w}{quote}" if quote and user[end - 1:end] == quote else str(w) for w in [v] + extra[k]]
            text = text[:start] + _spoken_list(items) + text[end:]
        text = f"{text} respectively{mark or '.'}"
    else:
        text = rng.choice(_AGAIN).format(request=text, values=_spoken_list([str(extra[k][0]) for _, k, _ in spans]))
    new = copy.deepcopy(ex)
    new["messages"][0]["content"] = text
    base = new["calls"][0]
    new["calls"] = [base] + [{**copy.deepcopy(base), "arguments": {**base["arguments"], **{k: extra[k][i] for k in extra}}}
                             for i in range(n)]
    return new


def substitute_numbers(ex: dict, ctx: _Context, rng: random.Random) -> dict | None:
    """Give each non-negative number argument that stands exactly once in the request another
    value, in the text and the call (a value already in the text is never chosen)."""
    new = copy.deepcopy(ex)
    message, call = new["messages"][0], new["calls"][0]
    changed = False
    for key, value in ex["calls"][0]["arguments"].items():
        if not _lone_number(value, message["content"]):
            continue
        other = _other_values(key, value, ctx, rng, 1, message["content"])[0]
        if str(other) in message["content"]:
            continue
        message["content"] = _word_pattern(str(value)).sub(lambda _: str(other), message["content"], count=1)
        call["arguments"][key] = other
        changed = True
    return new if changed else None


def repeat(ex: dict, ctx: _Context, rng: random.Random) -> dict | None:
    """One call -> the request said twice, the second time with other values, and the same tool
    called for each: BFCL's parallel category often changes several arguments at once."""
    if not (_user_only(ex) and len(ex["calls"]) == 1):
        return None
    other = substitute_numbers(ex, ctx, rng)
    if other is None or rng.random() < 0.5:
        other = substitute(other or ex, ctx, rng) or other
    if other is None:
        return None
    new = copy.deepcopy(ex)
    new["messages"] = [{"role": "user", "content": _join(ex["messages"][0]["content"],
                                                         other["messages"][0]["content"], rng)}]
    new["calls"] = new["calls"] + other["calls"]
    return new


_NOT_A_VERB = frozenset("a an the this that these it its your our my all any each one some".split())
_RESTATED = ("{what} with {args}.", "{what}: {args}.", "{what}, where {args_is}.", "Please {what_lower} using {args}.",
             "I need to {what_lower}; {args_is}.", "{what} for {args}.")


def _as_request(description: str) -> str | None:
    """A tool description's first sentence said as a request: "Calculates the area of a circle."
    -> "Calculate the area of a circle" (None unless it starts with a verb-like word)."""
    first = re.split(r"(?<=[.!?])\s", description.strip(), maxsplit=1)[0].rstrip(".!?: ")
    words = first.split()
    if not 3 <= len(words) <= 16 or not words[0].isalpha() or words[0].lower() in _NOT_A_VERB:
        return None
    verb = words[0].lower()
    if verb.endswith(("ches", "shes", "sses", "xes")):
        verb = verb[:-2]
    elif verb.endswith("ies"):
        verb = verb[:-3] + "y"
    elif verb.endswith("s") and not verb.endswith("ss"):
        verb = verb[:-1]
    return " ".join([verb.capitalize()] + words[1:])


def restate(ex: dict, ctx: _Context, rng: random.Random) -> dict | None:
    """One call -> the same call asked for in words that name each argument: "Calculate the
    compound annual growth rate with final value 3000, initial value 2000 and period in years 4".
    The tool's description says what to do and each value follows its parameter's name, in
    shuffled order, so the pairing is learnt from the names rather than from positions (BFCL's
    requests are often worded so; the recorded sets rarely are). Scalar string and number
    arguments only."""
    if not (_user_only(ex) and len(ex["calls"]) == 1):
        return None
    call = ex["calls"][0]
    tool = next((t for t in ex["tools"] if t["name"] == call["name"]), None)
    what = _as_request(str((tool or {}).get("description", "")))
    args = list(call["arguments"].items())
    if what is None or not args:
        return None
    stated = []
    for key, value in args:
        words = " ".join(name_words(key)).lower()
        if not words or not all(len(w) > 1 and re.search("[aeiouy]", w) for w in words.split()):
            return None  # no name to say ("jCSggfMVoW", "p1")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return None
        text = str(value)
        if not text.strip() or text != text.strip() or len(text) > 60 or "\n" in text:
            return None
        stated.append((words, text))
    rng.shuffle(stated)
    template = rng.choice(_RESTATED)
    request = template.format(what=what, what_lower=what[0].lower() + what[1:],
                              args=_spoken_list([f"{w} {v}" for w, v in stated]),
                              args_is=_spoken_list([f"{w} is {v}" for w, v in stated]))
    new = copy.deepcopy(ex)
    new["messages"] = [{"role": "user", "content": request}]
    return new


def make_variant(ex: dict, ctx: _Context, rng: random.Random) -> dict:
    """A composition: maybe substitute a value, maybe rename, usually add distractors; always shuffle."""
    new = ex
    steps = ((0.4, substitute), (0.3, rename), (0.8, add_distractors))
    for p, step in steps:
        if rng.random() < p:
            out = step(new, ctx, rng)
            if out is not None:
                ctx.stats[f"applied: {step.__name__}"] += 1
                new = out
    return shuffle_order(new, ctx, rng)


_MAKERS = {"variant": make_variant, "negative": make_negative, "merge": merge, "fan_out": fan_out, "repeat": repeat,
           "zip": zip_values, "restate": restate}


# ---- the entry point ----------------------------------------------------------------------------

def make_context(examples: list[dict], pool: ToolPool | None = None, stats: Counter | None = None) -> _Context:
    """What the transforms draw from: ``pool`` (by default the Seal-Tools pool under
    ``../shared/data``, or the examples' own tools when that is not there), the examples' tools
    per source, their value bank and their single-call requests; ``stats`` counts what happens."""
    if pool is None:
        try:
            pool = load_tool_pool()
        except FileNotFoundError:
            pool = pool_from_examples(examples)
    source_tools: dict[str, dict[str, dict]] = defaultdict(dict)
    for ex in examples:
        for t in ex["tools"]:
            source_tools[ex["source"]].setdefault(t["name"], t)
    return _Context(pool=pool, source_tools={s: list(t.values()) for s, t in source_tools.items()},
                    value_bank=build_value_bank(examples),
                    singles=[ex for ex in examples if _user_only(ex) and len(ex["calls"]) == 1],
                    stats=stats if stats is not None else Counter())


def variants_of(examples: list[dict], kinds: tuple[str, ...], copies: int = 6,
                seed: int = 11) -> list[tuple[str, dict]]:
    """(kind, variant): up to ``copies`` variants of each example per augmentation kind, ``id``
    suffixed ``~kind<k>`` like `augment`'s (a variant that left the example as it was is
    skipped); the held-out check (`training.heldout_eval`) is built from them, so that decoding
    choices are tuned on held-out requests instead of BFCL."""
    ctx = make_context(examples)
    out = []
    for kind in kinds:
        for k in range(copies):
            rng = random.Random(seed + k)
            for ex in examples:
                new = _MAKERS[kind](ex, ctx, rng)
                if new is None or validate_example(new) or all(new[f] == ex[f] for f in ("messages", "tools", "calls")):
                    continue
                out.append((kind, {**new, "id": f"{ex['id']}~{kind}{k}"}))
    return out


def augment(examples: list[dict], factor: int = 1, seed: int = 0, pool: ToolPool | None = None,
            stats: Counter | None = None, weights: dict[str, float] | None = None) -> list[dict]:
    """The examples followed by ``factor`` augmented copies of each (fewer where a copy fails).

    ``weights`` (kind -> weight) replace those of `KIND_WEIGHTS` they name, e.g. ``{"zip": 0}``.
    ``pool`` and ``stats``: see `make_context`. Same examples + seed -> same output."""
    unknown = set(weights or {}) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown augmentation kind(s) {sorted(unknown)}; the kinds are {', '.join(KINDS)}")
    kind_weights = [float((weights or {}).get(kind, w)) for kind, w in zip(KINDS, KIND_WEIGHTS)]
    ctx = make_context(examples, pool, stats)
    rng = random.Random(seed)
    out = list(examples)
    for ex in examples:
        for k in range(factor):
            kind = rng.choices(KINDS, kind_weights)[0]
            new = _MAKERS[kind](ex, ctx, rng)
            if new is None:
                ctx.stats[f"not applicable: {kind}"] += 1
                kind, new = "variant", make_variant(ex, ctx, rng)
            new["id"] = f"{new['id']}~{kind}{k}"
            problems = validate_example(new)
            if problems:
                ctx.stats[f"failed validation: {kind}"] += 1
                continue
            ctx.stats[f"made: {kind}"] += 1
            out.append(new)
    return out
