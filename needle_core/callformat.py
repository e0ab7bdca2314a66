"""The call format: how a request and its tools become encoder input, and what the decoder emits.

Decision (see ``../shared/docs/FIELD-NOTES.md`` sections 9 and 10 for the measurements behind it):

* Tokenizer: the uncased WordPiece tokenizer of all-MiniLM-L6-v2, because the encoder starts from
  that pretrained model. Its ``tokenizer.json`` ships in ``needle_core/assets``; the plain install
  needs only the ``tokenizers`` package.
* Input: ``[CLS]``, then the conversation, then the tools, then ``[SEP]``. BERT's never-trained
  ``[unusedN]`` ids serve as markers, so no tokenizer change is needed:

  - ``[unused6]`` user (or system) text, ``[unused7]`` assistant text,
    ``[unused4]`` an earlier call ``name ( key = value , ... )``, ``[unused5]`` a tool result;
  - ``[unused1] name : description`` per tool;
  - ``[unused2] key ( type , required ) : description`` per parameter, nested properties right
    after their parent (pre-order), array-of-object properties included;
  - ``[unused3] option`` per enum / const option, right after its parameter.

* Output: a sequence of *actions*. A handful are structural (``STOP`` no more calls, ``END`` end
  of an object, ``LIST``/``END_LIST`` around an array, ``TRUE``/``FALSE``/``NULL``); every other
  action is a pointer at an input position: the tool marker to call, the parameter marker of a
  key, an option marker, or the first and last token of a value span in the conversation. A
  decoder that points cannot misspell a name, a key or an enum option, and a span gives the
  value back as the exact original text (case, accents, spacing) through token offsets, which an
  uncased vocabulary could never regenerate. Values the input does not spell literally are
  produced by typed conversion of a span (``"five"`` -> 5, ``"1,000"`` -> 1000); anything else
  is left out when optional, which `needle data stats` counts.

The decoder's state machine (`needle_core.decoding`) reads the structures built here.
"""
from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Callable

import numpy as np

# ---- marker ids: BERT's [unusedN] tokens (id N + 1 in the MiniLM vocabulary) -------------------
CLS_ID, SEP_ID, PAD_ID = 101, 102, 0
MARK_TOOL, MARK_PARAM, MARK_OPTION = 2, 3, 4  # [unused1], [unused2], [unused3]
MARK_CALL, MARK_RESULT, MARK_USER, MARK_ASSISTANT = 5, 6, 7, 8  # [unused4] .. [unused7]

# ---- structural actions; pointer actions are N_STRUCT + position --------------------------------
STOP, END, LIST, END_LIST, TRUE, FALSE, NULL = range(7)
N_STRUCT = 7
BOS = N_STRUCT  # decoder input at step 0 (never an output)
STRUCT_NAMES = ("STOP", "END", "LIST", "END_LIST", "TRUE", "FALSE", "NULL")

# ---- position types: what a pointer may aim at --------------------------------------------------
PT_PAD, PT_TEXT, PT_TOOL, PT_PARAM, PT_OPTION, PT_OTHER = range(6)
N_POS_TYPES = 6

# ---- step kinds: what the state machine expects next (also a decoder input) ----------------------
K_CALL, K_KEY, K_VALUE, K_ITEM, K_SPAN_END = range(5)
N_KINDS = 5

# Coarse masks by kind, used in training (the exact masks come from the state machine at inference).
KIND_STRUCT_ALLOWED = np.zeros((N_KINDS, N_STRUCT), dtype=bool)
KIND_POS_ALLOWED = np.zeros((N_KINDS, N_POS_TYPES), dtype=bool)
KIND_STRUCT_ALLOWED[K_CALL, [STOP]] = True
KIND_POS_ALLOWED[K_CALL, [PT_TOOL]] = True
KIND_STRUCT_ALLOWED[K_KEY, [END]] = True
KIND_POS_ALLOWED[K_KEY, [PT_PARAM, PT_TEXT]] = True
KIND_STRUCT_ALLOWED[K_VALUE, [END, LIST, TRUE, FALSE, NULL]] = True
KIND_POS_ALLOWED[K_VALUE, [PT_TEXT, PT_OPTION, PT_PARAM]] = True
KIND_STRUCT_ALLOWED[K_ITEM, [END, LIST, END_LIST, TRUE, FALSE, NULL]] = True
KIND_POS_ALLOWED[K_ITEM, [PT_TEXT, PT_OPTION, PT_PARAM]] = True
KIND_POS_ALLOWED[K_SPAN_END, [PT_TEXT]] = True

ITEMS = "[]"  # path component for array items


@lru_cache(maxsize=1)
def load_tokenizer():
    """The MiniLM WordPiece tokenizer, without padding or truncation (we place every token)."""
    from tokenizers import Tokenizer

    path = resources.files("needle_core") / "assets" / "tokenizer.json"
    tok = Tokenizer.from_str(path.read_text(encoding="utf-8"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def pad_ids(id_lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """A batch of rendered inputs as (ids, attention mask), right-padded with [PAD]."""
    L = max(len(x) for x in id_lists)
    ids = np.full((len(id_lists), L), PAD_ID, np.int64)
    mask = np.zeros((len(id_lists), L), np.int64)
    for b, x in enumerate(id_lists):
        ids[b, : len(x)], mask[b, : len(x)] = x, 1
    return ids, mask


# ---- schema helpers shared by rendering and decoding ---------------------------------------------
def primary_branch(node: dict) -> tuple[dict, bool]:
    """(the schema the decoder builds values from, whether null is allowed).

    A union (``anyOf``/``oneOf``) is decoded through its first non-null branch; null stays
    allowed when a branch is null. Any value of one branch satisfies ``anyOf``, so this keeps the
    validity guarantee while the state machine stays small.
    """
    nullable = node.get("type") == "null"
    for key in ("anyOf", "oneOf"):
        if key in node:
            branches = node[key]
            nullable = any(b.get("type") == "null" for b in branches)
            real = [b for b in branches if b.get("type") != "null"]
            if not real:
                return {"type": "null"}, True
            inner, inner_null = primary_branch(real[0])
            return inner, nullable or inner_null
    return node, nullable


def enum_options(node: dict) -> list[Any] | None:
    if "const" in node:
        return [node["const"]]
    if "enum" in node:
        return list(node["enum"])
    return None


def type_label(node: dict) -> str:
    inner, nullable = primary_branch(node)
    t = inner.get("type", "any")
    if enum_options(inner) is not None:
        t = "enum"
    elif t == "array":
        t = "array of " + primary_branch(inner.get("items", {}))[0].get("type", "any")
    return t + (" or null" if nullable else "")


def option_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# ---- rendering -----------------------------------------------------------------------------------
@dataclass
class Rendered:
    """Encoder input plus everything needed to read pointer actions back."""

    ids: list[int]
    pos_type: list[int]
    segment: list[int]  # conversation segment of a text token, -1 elsewhere
    offsets: list[tuple[int, int]]  # char offsets of a text token inside its segment's text
    word_start: list[bool]  # text token that starts a word (not a ## continuation)
    segments: list[str]  # the conversation texts, copied values come from these
    tool_names: list[str]
    tool_pos: list[int]  # marker position of each rendered tool
    param_pos: dict[tuple[int, tuple[str, ...]], int] = field(default_factory=dict)
    option_pos: dict[tuple[int, tuple[str, ...]], list[tuple[int, Any]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    kept_tools: list[int] = field(default_factory=list)  # indices into the given specs, in render order

    def __len__(self) -> int:
        return len(self.ids)

    def span_text(self, start: int, end: int) -> str:
        seg = self.segment[start]
        return self.segments[seg][self.offsets[start][0]: self.offsets[end][1]]

    def text_after(self, end: int, n: int = 12) -> str:
        """Up to ``n`` characters of the segment right after a span's last token."""
        seg = self.segment[end]
        return self.segments[seg][self.offsets[end][1]: self.offsets[end][1] + n]


def render_call_text(call: dict) -> str:
    args = call.get("arguments") or {}
    inner = " , ".join(f"{k} = {option_text(v)}" for k, v in args.items())
    return f"{call.get('name', '')} ( {inner} )"


def _conversation_pieces(messages: list[dict]) -> list[tuple[int, str]]:
    """(marker, text) per conversation piece, in order."""
    pieces: list[tuple[int, str]] = []
    for msg in messages:
        role = msg["role"]
        if role in ("user", "system"):
            pieces.append((MARK_USER, msg.get("content") or ""))
        elif role == "assistant":
            if msg.get("content"):
                pieces.append((MARK_ASSISTANT, msg["content"]))
            for call in msg.get("tool_calls") or []:
                pieces.append((MARK_CALL, render_call_text(call)))
        elif role == "tool":
            pieces.append((MARK_RESULT, msg.get("content") or ""))
    return pieces


def _tool_pieces(tool_index: int, spec) -> list[tuple[str, Any, str]]:
    """(kind, key, text) per tool piece: ('tool', None, ..), ('param', path, ..), ('option', (path, value), ..)."""
    out: list[tuple[str, Any, str]] = [("tool", None, f"{spec.name.replace('_', ' ')} : {spec.description}")]

    def options(node: dict, path: tuple[str, ...]):
        inner = primary_branch(node)[0]
        for value in enum_options(inner) or []:
            out.append(("option", (path, value), option_text(value)))
        if inner.get("type") == "array":
            options(inner.get("items", {}), path + (ITEMS,))

    def walk(node: dict, path: tuple[str, ...]):
        inner, _ = primary_branch(node)
        if inner.get("type") == "array":
            walk(inner.get("items", {}), path + (ITEMS,))
            return
        if inner.get("type") != "object":
            return
        required = set(inner.get("required", []))
        for key, sub in inner.get("properties", {}).items():
            sub_path = path + (key,)
            req = " , required" if key in required else ""
            desc = sub.get("description") or primary_branch(sub)[0].get("description", "")
            out.append(("param", sub_path, f"{key.replace('_', ' ')} ( {type_label(sub)}{req} ) : {desc}"))
            options(sub, sub_path)
            walk(sub, sub_path)

    walk(spec.parameters, ())
    return out


class Renderer:
    """Turns (messages, tool specs) into `Rendered`, within the encoder's position budget.

    Tool pieces are tokenized once per distinct spec and cached, so a fixed toolset costs
    nothing to re-render. Over budget, descriptions are shortened first (reported in
    ``warnings``); tools that still do not fit are left out only when ``rank_tools`` ranks
    them lowest, and that is reported too.
    """

    def __init__(self, max_len: int = 512, max_conversation: int = 256, desc_budgets=(48, 32, 20, 12, 8)):
        self.max_len, self.max_conversation, self.desc_budgets = max_len, max_conversation, desc_budgets
        self.tok = load_tokenizer()
        self._tool_cache: dict[str, list] = {}

    # -- tokenization helpers --
    def _encode(self, texts: list[str]):
        return self.tok.encode_batch(texts, add_special_tokens=False) if texts else []

    def _tool_tokens(self, tool_index: int, spec) -> list:
        key = spec.key
        cached = self._tool_cache.get(key)
        if cached is None:
            pieces = _tool_pieces(tool_index, spec)
            encs = self._encode([text for _, _, text in pieces])
            cached = [(kind, k, enc.ids) for (kind, k, _), enc in zip(pieces, encs)]
            if len(self._tool_cache) > 4096:
                self._tool_cache.clear()
            self._tool_cache[key] = cached
        return cached

    def render(self, messages: list[dict], specs: list, rank_tools: Callable[[list[int]], list[int]] | None = None) -> Rendered:
        warnings: list[str] = []
        pieces = _conversation_pieces(messages)
        encs = self._encode([text for _, text in pieces])
        conv_len = sum(1 + len(e.ids) for e in encs)
        if conv_len > self.max_conversation:
            # keep the most recent turns; cut the oldest text first
            budget, kept = self.max_conversation, []
            for (marker, text), enc in reversed(list(zip(pieces, encs))):
                take = min(len(enc.ids), max(budget - 1, 0))
                if take <= 0:
                    break
                kept.append((marker, text, enc, take))
                budget -= 1 + take
            kept.reverse()
            warnings.append(f"conversation cut from {conv_len} to {self.max_conversation} tokens to fit the model")
        else:
            kept = [(m, t, e, len(e.ids)) for (m, t), e in zip(pieces, encs)]

        ids, pos_type, segment, offsets, word_start = [CLS_ID], [PT_OTHER], [-1], [(0, 0)], [False]
        segments: list[str] = []
        for marker, text, enc, take in kept:
            ids.append(marker); pos_type.append(PT_OTHER); segment.append(-1); offsets.append((0, 0)); word_start.append(False)
            seg = len(segments)
            segments.append(text)
            for i in range(take):
                ids.append(enc.ids[i]); pos_type.append(PT_TEXT); segment.append(seg)
                offsets.append(_attach_marks(text, enc.offsets, i)); word_start.append(not enc.tokens[i].startswith("##"))
        ids.append(SEP_ID); pos_type.append(PT_OTHER); segment.append(-1); offsets.append((0, 0)); word_start.append(False)

        tool_tokens = [self._tool_tokens(i, s) for i, s in enumerate(specs)]
        room = self.max_len - len(ids) - 1
        chosen = list(range(len(specs)))

        def size(budget: int, which: list[int]) -> int:
            return sum(1 + len(_piece_body(t, budget)) for i in which for kind, _, t in tool_tokens[i])

        budget = self.desc_budgets[0]
        for budget in self.desc_budgets:
            if size(budget, chosen) <= room:
                break
        if size(budget, chosen) > room:
            order = rank_tools(chosen) if rank_tools else chosen
            keep: list[int] = []
            for i in order:
                if size(budget, keep + [i]) <= room:
                    keep.append(i)
            dropped = [specs[i].name for i in chosen if i not in keep]
            chosen = sorted(keep)
            warnings.append(f"{len(dropped)} of {len(specs)} tools left out to fit the model "
                            f"(kept the best ranked): {', '.join(dropped[:10])}{' ...' if len(dropped) > 10 else ''}")
        if budget < self.desc_budgets[0] and specs:
            warnings.append(f"tool and parameter descriptions shortened to {budget} tokens to fit the model")

        out = Rendered(ids, pos_type, segment, offsets, word_start, segments, [], [], warnings=warnings)
        marker_of = {"tool": MARK_TOOL, "param": MARK_PARAM, "option": MARK_OPTION}
        ptype_of = {"tool": PT_TOOL, "param": PT_PARAM, "option": PT_OPTION}
        for rank, i in enumerate(chosen):
            for kind, key, toks in tool_tokens[i]:
                pos = len(out.ids)
                out.ids.append(marker_of[kind]); out.pos_type.append(ptype_of[kind])
                out.segment.append(-1); out.offsets.append((0, 0)); out.word_start.append(False)
                if kind == "tool":
                    out.tool_names.append(specs[i].name); out.tool_pos.append(pos)
                elif kind == "param":
                    out.param_pos[(rank, key)] = pos
                else:
                    path, value = key
                    out.option_pos.setdefault((rank, path), []).append((pos, value))
                body = _piece_body(toks, budget)
                out.ids.extend(body); out.pos_type.extend([PT_OTHER] * len(body))
                out.segment.extend([-1] * len(body)); out.offsets.extend([(0, 0)] * len(body))
                out.word_start.extend([False] * len(body))
        out.ids.append(SEP_ID); out.pos_type.append(PT_OTHER); out.segment.append(-1)
        out.offsets.append((0, 0)); out.word_start.append(False)
        out.kept_tools = chosen
        return out


def _attach_marks(text: str, offsets: list[tuple[int, int]], i: int) -> tuple[int, int]:
    """Token ``i``'s character span, extended over the combining marks that follow it.

    The uncased normalizer drops nonspacing marks (a decomposed accent, a virama or vowel sign,
    the emoji variation selector) and joiners, so a token's offsets stop before a mark that ends
    a word: a span would copy ``Cafe`` out of ``Cafe`` + U+0301. Marks up to the next token belong
    to this one, so copied values keep every character as written.
    """
    start, end = offsets[i]
    limit = offsets[i + 1][0] if i + 1 < len(offsets) else len(text)
    while end < limit and (unicodedata.category(text[end]) in ("Mn", "Me") or text[end] in "\u200c\u200d"):
        end += 1
    return start, end


def _piece_body(toks: list[int], budget: int) -> list[int]:
    """The tokens kept after a marker: at least 8 (the name and type), up to ``budget``."""
    return toks[: max(budget, 8)]
