"""Turn tools of every common form into one canonical spec, and check calls against it.

Needle's constrained decoder builds its grammar from tool schemas, so it reads only one small,
predictable dialect of JSON Schema. This module is the single door into that dialect:
`to_tool_spec` / `to_tool_specs` accept LangChain tools, LlamaIndex tools, pydantic model
classes, typed Python functions, OpenAI / Anthropic / Gemini / MCP / Berkeley (BFCL) tool dicts
and JSON strings of any of these, and return `ToolSpec` objects. `validate_call` checks (and
safely coerces) the arguments of a call against the declared specs.

Canonical form of ``ToolSpec.parameters`` (the decoder relies on every rule):

- Every node is a dict. ``type``, when present, is ONE of ``object``, ``array``, ``string``,
  ``integer``, ``number``, ``boolean``, ``null``. A node without ``type`` accepts any value,
  possibly restricted by ``enum`` / ``const``; when all enum (or const) members share one JSON
  type, that type is filled in. A typeless node with ``properties`` is an object, with
  ``items`` / ``prefixItems`` an array.
- Enum members of another type than the node's are left out (no value could equal them). When
  none fits but some are the type written as text, those are read as it: ``{"type": "integer",
  "enum": ["1", "2", "dontcare"]}`` -> ``[1, 2]``, ``{"type": "boolean", "enum": ["True",
  "False"]}`` -> ``[true, false]``. An array's enum of non-arrays is its items' enum.
- Type aliases are resolved: upper-case Gemini names (``STRING``), BFCL / Python names
  (``dict`` -> object, ``float`` / ``double`` -> number, ``tuple`` / ``list`` -> array,
  ``int``, ``str``, ``bool``, ``any`` -> no type). Any other type name is an error.
- Nullable: a type list with ``null``, ``Optional[X]`` or ``nullable: true`` becomes
  ``{"anyOf": [X, {"type": "null"}]}``, with ``description`` / ``default`` hoisted onto the
  ``anyOf`` node. Other type lists become ``anyOf`` of one node per type. Other unions stay
  ``anyOf`` (nested ``anyOf`` flattened, ``null`` branch last, a single branch collapsed);
  ``oneOf`` stays ``oneOf``. Constraints written beside ``anyOf`` / ``oneOf`` are pushed into
  every branch.
- ``allOf`` is merged into one node (properties merged, ``required`` united, types and enums
  intersected, the stricter bound kept, the first annotation kept); parts that contradict each
  other are a `ToolSchemaError`.
- Object nodes always have ``properties`` (maybe empty) and ``required`` (maybe empty, only
  declared keys, in property order). ``additionalProperties`` is kept when given (``false``, or
  a canonical schema); an object given without ``properties`` is a free-form dict and gets
  ``additionalProperties`` as given, else ``true``.
- Array nodes always have ``items`` (``{}`` = anything). Tuples (``prefixItems``, or the old
  list form of ``items``) are not enforced position by position: ``items`` becomes the member
  schema when all members are equal, ``{"type": T}`` when they share a type, else ``{}``.
  ``minItems`` / ``maxItems`` / ``uniqueItems`` are kept.
- Kept keywords: ``description``, ``default``, ``enum``, ``const``, and for the node's own type
  ``minimum``, ``maximum``, ``exclusiveMinimum`` / ``exclusiveMaximum`` (numeric; the draft-4
  boolean form is converted), ``multipleOf``, ``minLength``, ``maxLength``, ``pattern``,
  ``format`` (strings and numbers). Keywords of another type have no effect in JSON Schema
  and are dropped, as are annotations (``title``, ``examples``, ``$schema``, ``$id``,
  ``$comment``, ``readOnly``, vendor keys, ...). Assertions that Needle cannot enforce
  (``not``, ``if``, ``patternProperties``, ``minProperties``, ...) are an error, never
  silently dropped.
- ``$ref`` pointers into the same document (``#/$defs/...``, ``#/definitions/...``) are
  inlined and ``$defs`` / ``definitions`` removed; a reference cycle (a recursive schema) is an
  error naming the path where it loops.
- The top-level ``parameters`` is always an object node; a tool without parameters gets
  ``{"type": "object", "properties": {}, "required": []}``. At the top level only, an object
  given without ``properties`` (MCP's and BFCL's usual way to say "no arguments") means that
  too, not a free-form dict.
- Converting a canonical spec again gives the same spec.

Python functions: the first docstring paragraph (Google, NumPy or reST) is the description and
the docstring's parameter entries describe parameters that have no ``Field(description=...)``;
``*args`` / ``**kwargs`` are left out. `validate_call` does not check ``format`` (as in
JSON Schema 2020-12, it is an annotation there).

Errors are `ToolSchemaError` naming the tool (or ``#i``, its position, when the name is unknown)
and the JSON path, e.g. ``parameters.properties.unit.type``. Nothing half-converted is returned.
"""
from __future__ import annotations

import copy
import inspect
import json
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, NamedTuple

import jsonschema
from pydantic import BaseModel, Field, PydanticUserError, TypeAdapter, create_model
from pydantic.fields import FieldInfo

from needle_core.errors import ToolCallError, ToolSchemaError

__all__ = ["TOOL_NAME_RE", "ToolSpec", "to_tool_spec", "to_tool_specs", "validate_call", "validate_value"]

TOOL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,127}$")
JSON_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_TYPE_ALIASES = {
    "dict": "object", "float": "number", "double": "number", "tuple": "array", "list": "array",
    "int": "integer", "str": "string", "bool": "boolean", "any": None,
}
# Gemini's Python SDK spells keywords in snake_case.
_SNAKE_CASE = {
    "any_of": "anyOf", "min_items": "minItems", "max_items": "maxItems", "min_length": "minLength",
    "max_length": "maxLength", "property_ordering": "propertyOrdering",
}
_TYPE_KEYWORDS = {
    "string": ("minLength", "maxLength", "pattern", "format"),
    "integer": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "format"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "format"),
    "array": ("items", "prefixItems", "minItems", "maxItems", "uniqueItems"),
    "object": ("properties", "required", "additionalProperties"),
}
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")
_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_BOUND_PAIRS = (("minimum", "maximum"), ("minLength", "maxLength"), ("minItems", "maxItems"))
_LOWER_BOUNDS = {"minimum", "exclusiveMinimum", "minLength", "minItems"}
_UPPER_BOUNDS = {"maximum", "exclusiveMaximum", "maxLength", "maxItems"}
# Keywords that restrict values: beside an anyOf/oneOf they must be pushed into the branches.
_ASSERTIONS = {"type", "enum", "const", "nullable", "uniqueItems", "allOf", "items", "prefixItems"}
_ASSERTIONS |= {k for keys in _TYPE_KEYWORDS.values() for k in keys}
_UNSUPPORTED = {
    "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
    "patternProperties", "propertyNames", "contains", "minContains", "maxContains",
    "minProperties", "maxProperties", "unevaluatedProperties", "unevaluatedItems",
    "$dynamicRef", "$recursiveRef",
}
# Where sub-schemas live, for the $ref-inlining walk.
_SCHEMA_MAPS = ("properties", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "any_of")
_SCHEMA_ONE = (
    "items", "additionalProperties", "additionalItems", "not", "contains", "propertyNames",
    "if", "then", "else", "unevaluatedItems", "unevaluatedProperties",
)
_PARAMETER_KEYS = ("parameters", "input_schema", "inputSchema", "parameters_json_schema", "parametersJsonSchema")
_EMPTY_PARAMETERS = {"type": "object", "properties": {}, "required": []}
_STRUCTURE_KEYS = {
    "properties", "additionalProperties", "$ref", "allOf", "anyOf", "oneOf", "any_of", "items", "prefixItems",
}


@dataclass(frozen=True)
class ToolSpec:
    """One tool in canonical form: what the prompt renderer and the decoder read."""

    name: str
    description: str
    parameters: dict

    def to_dict(self) -> dict:
        """A plain dict (a deep copy, so callers cannot change the spec by accident)."""
        return {"name": self.name, "description": self.description, "parameters": copy.deepcopy(self.parameters)}

    def to_openai(self) -> dict:
        """The OpenAI chat-completions tool form."""
        return {"type": "function", "function": self.to_dict()}

    @cached_property
    def key(self) -> str:
        """The spec's whole content as one string, computed once per spec: the cache key of what
        is derived from a spec (rendered tool tokens, ranking embeddings). Specs are not mutated."""
        return json.dumps([self.name, self.description, self.parameters], ensure_ascii=False)


# --------------------------------------------------------------------------- public entry points


def to_tool_spec(tool: Any) -> ToolSpec:
    """Convert one tool, in any supported form, into a canonical `ToolSpec`."""
    return _convert(tool, "#0")


def to_tool_specs(tools: Any) -> list[ToolSpec]:
    """Convert a list of tools (or a JSON string of a list); tool names must be unique."""
    if isinstance(tools, (str, bytes)):
        tools = _load_json(tools, "<tools>", "")
    if isinstance(tools, (dict, ToolSpec)) or not isinstance(tools, (list, tuple)):
        raise ToolSchemaError("<tools>", "", f"expected a list of tools, got {type(tools).__name__}")
    specs: list[ToolSpec] = []
    seen: dict[str, int] = {}
    for i, tool in enumerate(tools):
        spec = _convert(tool, f"#{i}")
        if spec.name in seen:
            raise ToolSchemaError(spec.name, "name", f"duplicate tool name (tools #{seen[spec.name]} and #{i})")
        seen[spec.name] = i
        specs.append(spec)
    return specs


def validate_call(name: str, arguments: Any, specs: list[ToolSpec] | dict[str, ToolSpec]) -> dict:
    """Check a call against the declared tools and return its (safely coerced) arguments.

    Coercion only fixes what has one reading: ``"3"`` -> 3 for an integer, ``"2.5"`` -> 2.5 and
    3 -> 3.0 for a number, ``"true"`` / ``"false"`` -> bool. A lone value is never wrapped
    into an array. The first problem left raises `ToolCallError` with its JSON path.
    """
    by_name = dict(specs) if isinstance(specs, dict) else {s.name: s for s in specs}
    spec = by_name.get(name)
    if spec is None:
        declared = ", ".join(repr(n) for n in by_name) or "none"
        raise ToolCallError(str(name), "", f"unknown tool (declared tools: {declared})")
    if isinstance(arguments, (str, bytes)):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ToolCallError(name, "arguments", f"not valid JSON: {exc}") from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ToolCallError(name, "arguments", f"expected a JSON object, got {type(arguments).__name__}")
    coerced = _coerce(arguments, spec.parameters)
    for path, problem in _problems(coerced, spec.parameters, "arguments"):
        raise ToolCallError(name, path, problem)
    return coerced


def validate_value(value: Any, schema: dict) -> list[str]:
    """Problems of ``value`` against a canonical schema, as ``"path: problem"`` (empty = valid)."""
    return [f"{path}: {problem}" for path, problem in _problems(value, schema, "value")]


# --------------------------------------------------------------------------- recognising tool forms


_CONVERTED: dict[str, ToolSpec] = {}
_CONVERTED_MAX = 4096


def _from_dict_remembered(tool: dict, label: str) -> ToolSpec:
    """`_from_dict` with a bounded memo: agents send the same tools on every call, training data
    repeats them across thousands of examples, and one conversion runs a full schema check. The
    key keeps key order (property order is part of a spec). Failures are not remembered, so each
    error names the tool by its own label."""
    try:
        key = json.dumps(tool, ensure_ascii=False)
    except (TypeError, ValueError):  # not plain JSON data: convert every time
        return _from_dict(tool, label)
    spec = _CONVERTED.get(key)
    if spec is None:
        spec = _from_dict(tool, label)
        if len(_CONVERTED) >= _CONVERTED_MAX:
            _CONVERTED.clear()
        _CONVERTED[key] = spec
    return spec


def _convert(tool: Any, label: str) -> ToolSpec:
    """Dispatch on the tool's form; ``label`` names it in errors until its name is known."""
    if isinstance(tool, ToolSpec):
        return _from_dict_remembered(tool.to_dict(), label)
    if isinstance(tool, (str, bytes)):
        loaded = _load_json(tool, label, "")
        if isinstance(loaded, list):
            raise ToolSchemaError(label, "", "expected one tool, got a JSON list (use to_tool_specs)")
        return _convert(loaded, label)
    if isinstance(tool, dict):
        return _from_dict_remembered(tool, label)
    if _is_langchain_tool(tool):
        return _from_langchain(tool, label)
    if _is_llamaindex_tool(tool):
        return _from_llamaindex(tool, label)
    if isinstance(tool, type):
        if issubclass(tool, BaseModel):
            return _from_model(tool)
        raise ToolSchemaError(
            label, "", f"unsupported tool: class {tool.__name__} (pass a pydantic model class or a function)"
        )
    if callable(tool):
        return _from_function(tool)
    raise ToolSchemaError(
        label, "", f"unsupported tool of type {type(tool).__name__} (expected a tool dict, JSON string, "
        "LangChain or LlamaIndex tool, pydantic model class or typed function)"
    )


def _load_json(text: str | bytes, label: str, path: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolSchemaError(label, path, f"string is not valid JSON: {exc}") from None


def _from_dict(tool: dict, label: str) -> ToolSpec:
    """OpenAI (wrapped or bare), Anthropic, Gemini, MCP and BFCL dicts differ only in key names."""
    if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        tool = tool["function"]
    name = tool.get("name")
    if isinstance(name, str) and name:
        label = name
    description = tool.get("description")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise ToolSchemaError(label, "description", f"expected a string, got {type(description).__name__}")
    key = next((k for k in _PARAMETER_KEYS if k in tool), "parameters")
    return _finish(name, description.strip(), tool.get(key), label, key)


def _is_langchain_tool(tool: Any) -> bool:
    # Only look if LangChain is already loaded: a LangChain tool cannot exist otherwise.
    module = sys.modules.get("langchain_core.tools.base")
    return module is not None and isinstance(tool, module.BaseTool)


def _from_langchain(tool: Any, label: str) -> ToolSpec:
    from langchain_core.utils.function_calling import convert_to_openai_tool

    label = getattr(tool, "name", None) or label
    try:
        function = convert_to_openai_tool(tool)["function"]
    except Exception as exc:  # LangChain raises many kinds; name the tool whatever they are.
        raise ToolSchemaError(label, "", f"LangChain could not describe this tool: {exc}") from exc
    return _from_framework(function.get("name"), function.get("description"), function.get("parameters"), label)


def _is_llamaindex_tool(tool: Any) -> bool:
    meta = getattr(tool, "metadata", None)
    return hasattr(meta, "name") and (hasattr(meta, "get_parameters_dict") or hasattr(meta, "fn_schema"))


def _from_llamaindex(tool: Any, label: str) -> ToolSpec:
    meta = tool.metadata
    name = meta.name
    label = name or label
    try:
        if hasattr(meta, "get_parameters_dict"):
            parameters = meta.get_parameters_dict()
        else:
            parameters = meta.fn_schema.model_json_schema() if meta.fn_schema is not None else None
    except Exception as exc:
        raise ToolSchemaError(label, "parameters", f"LlamaIndex could not describe this tool: {exc}") from exc
    description = getattr(meta, "description", "") or ""
    # FunctionTool prefixes the docstring with the Python signature; the model needs only the text.
    first, _, rest = description.partition("\n")
    if name and first.startswith(f"{name}("):
        description = rest
    return _from_framework(name, description, parameters, label)


def _from_framework(name: Any, description: Any, parameters: Any, label: str) -> ToolSpec:
    """Framework tools often carry a raw docstring as description: split it like a function's."""
    if not isinstance(description, str):
        description = ""
    doc = _parse_docstring(description)
    if doc.structured:
        description = doc.summary
        parameters = _add_param_docs(parameters, doc.params)
    return _finish(name, inspect.cleandoc(description), parameters, label, "parameters")


def _from_model(model: type[BaseModel]) -> ToolSpec:
    label = model.__name__
    try:
        schema = model.model_json_schema()
    except PydanticUserError as exc:
        raise ToolSchemaError(label, "parameters", f"pydantic cannot describe this model: {exc}") from exc
    schema.pop("title", None)
    schema.pop("description", None)  # the docstring: it is the tool description, not a parameter's
    own_doc = model.__dict__.get("__doc__")
    return _finish(label, inspect.cleandoc(own_doc) if own_doc else "", schema, label, "parameters")


def _from_function(fn: Any) -> ToolSpec:
    """Build the argument schema with pydantic (so ``Annotated[..., Field(...)]`` works) + docstring."""
    name = label = getattr(fn, "__name__", None) or type(fn).__name__
    try:
        signature = inspect.signature(fn, eval_str=True)
    except (ValueError, TypeError) as exc:
        problem = f"cannot read a signature from {type(fn).__name__} ({exc}); pass a function with typed parameters"
        raise ToolSchemaError(label, "", problem) from None
    except Exception as exc:  # eval_str runs annotation strings: NameError and friends
        raise ToolSchemaError(label, "parameters", f"cannot resolve the parameter annotations: {exc}") from None
    # *args / **kwargs have no fixed names, so a model cannot fill them: they are left out.
    params = [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    # Fields get neutral names and the real name as alias: parameters such as `_x` or
    # `model_config` would otherwise clash with pydantic's own attributes.
    fields = {f"p{i}": _field(p) for i, p in enumerate(params)}
    try:
        schema = create_model(f"{name}_arguments", **fields).model_json_schema(by_alias=True)
    except PydanticUserError as exc:
        raise _type_error(label, params, exc) from None
    schema.pop("title", None)
    doc = _parse_docstring(inspect.getdoc(fn) or "")
    return _finish(name, doc.summary, _add_param_docs(schema, doc.params), label, "parameters")


def _field(p: inspect.Parameter) -> tuple[Any, FieldInfo]:
    """A pydantic field for one parameter; ``x: int = Field(3, ge=0)`` defaults work too."""
    annotation = Any if p.annotation is p.empty else p.annotation
    if isinstance(p.default, FieldInfo):
        return Annotated[annotation, p.default], Field(alias=p.name)
    return annotation, Field(... if p.default is p.empty else p.default, alias=p.name)


def _type_error(label: str, params: list[inspect.Parameter], exc: Exception) -> ToolSchemaError:
    """Point at the parameter whose annotation pydantic cannot turn into JSON Schema."""
    for p in params:
        if p.annotation is p.empty:
            continue
        try:
            TypeAdapter(p.annotation).json_schema()
        except Exception as inner:
            problem = str(inner).splitlines()[0]
            where = f"parameters.properties.{p.name}"
            return ToolSchemaError(label, where, f"cannot describe type {p.annotation!r}: {problem}")
    return ToolSchemaError(label, "parameters", f"cannot describe the parameters: {str(exc).splitlines()[0]}")


def _add_param_docs(parameters: Any, docs: dict[str, str]) -> Any:
    """Fill in docstring descriptions for properties that have none (explicit ones win)."""
    if not docs or not isinstance(parameters, dict) or not isinstance(parameters.get("properties"), dict):
        return parameters
    properties = dict(parameters["properties"])
    for key, text in docs.items():
        prop = properties.get(key)
        if isinstance(prop, dict) and not prop.get("description"):
            properties[key] = {**prop, "description": text}
    return {**parameters, "properties": properties}


def _finish(name: Any, description: str, parameters: Any, label: str, key: str) -> ToolSpec:
    """Check the name, canonicalise the parameters and build the spec."""
    if name is None or name == "":
        raise ToolSchemaError(label, "name", "missing tool name")
    if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
        raise ToolSchemaError(
            label, "name", f"invalid tool name {name!r}: the model can only emit names matching {TOOL_NAME_RE.pattern}"
        )
    if isinstance(parameters, (str, bytes)):
        parameters = _load_json(parameters, label, key)
    if parameters is None or parameters == {}:
        parameters = _EMPTY_PARAMETERS
    elif isinstance(parameters, dict) and not set(parameters) & _STRUCTURE_KEYS:
        # MCP and BFCL often write {"type": "object"} for "no arguments": not a free-form dict here.
        parameters = {**parameters, "properties": {}}
    canonical = _Canonicalizer(label, parameters).convert(parameters, key)
    if canonical.get("type") != "object":
        raise ToolSchemaError(label, key, f"parameters must describe an object, got {_short(canonical)}")
    error = jsonschema.exceptions.best_match(_METASCHEMA.iter_errors(canonical))
    if error is not None:  # a safety net: canonical output should always pass
        where = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
        raise ToolSchemaError(label, key + where, f"invalid schema: {error.message}")
    return ToolSpec(name, description, canonical)


# The safety net checks canonical output against draft 7's metaschema, built once: canonical
# schemas use no keyword whose meaning differs between draft 7 and 2020-12 (``prefixItems`` is
# built member by member by the converter), and the 2020-12 metaschema's $dynamicRef resolution
# costs ~1 ms per tool, which a latency budget of 20 ms per call cannot carry.
_METASCHEMA = jsonschema.Draft7Validator(jsonschema.Draft7Validator.META_SCHEMA)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- docstrings

_GOOGLE_PARAM_HEADERS = {
    "args", "arguments", "parameters", "params", "keyword args", "keyword arguments", "other parameters",
}
_GOOGLE_HEADERS = _GOOGLE_PARAM_HEADERS | {
    "returns", "return", "yields", "yield", "raises", "examples", "example", "note", "notes",
    "warning", "warnings", "see also", "references", "attributes", "todo", "methods",
}
_NUMPY_PARAM_HEADERS = {"parameters", "other parameters", "keyword arguments", "arguments"}
_DASHES = re.compile(r"^\s*-{3,}\s*$")
_GOOGLE_ITEM = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_ITEM = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?::.*)?$")
_REST_PARAM = re.compile(r"^:(?:param|parameter|arg|argument|key|keyword)\s+(?:[^:]*?\s)?\*{0,2}(\w+)\s*:\s*(.*)$")
_REST_FIELD = re.compile(r"^:\w+")


class _Doc(NamedTuple):
    summary: str  # the first paragraph, on one line
    params: dict[str, str]
    structured: bool  # it has sections (Google, NumPy or reST): it is a docstring, not free text


def _parse_docstring(doc: str) -> _Doc:
    """Read Google, NumPy and reST docstrings: the first paragraph and per-parameter text."""
    lines = inspect.cleandoc(doc or "").splitlines()
    starts = [i for i in range(len(lines)) if _section_kind(lines, i)]
    end = next((i for i, line in enumerate(lines) if not line.strip() or i in starts), len(lines))
    summary = " ".join(line.strip() for line in lines[:end])
    params: dict[str, str] = {}
    for i in starts:
        kind = _section_kind(lines, i)
        reader = {"google": _google_params, "numpy": _numpy_params, "rest": _rest_param}.get(kind)
        if reader:
            params.update(reader(lines, i))
    return _Doc(summary, params, bool(starts))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _section_kind(lines: list[str], i: int) -> str | None:
    """What section starts at line ``i``: 'google' / 'numpy' / 'rest' for parameters, 'other', None."""
    text = lines[i].strip()
    if text.endswith(":") and text[:-1].strip().lower() in _GOOGLE_HEADERS:
        return "google" if text[:-1].strip().lower() in _GOOGLE_PARAM_HEADERS else "other"
    if text and i + 1 < len(lines) and _DASHES.match(lines[i + 1]) and not _DASHES.match(lines[i]):
        return "numpy" if text.lower() in _NUMPY_PARAM_HEADERS else "other"
    if _REST_PARAM.match(text):
        return "rest"
    if _REST_FIELD.match(text) or text.startswith(">>>"):
        return "other"
    return None


def _google_params(lines: list[str], start: int) -> dict[str, str]:
    """``Args:`` then ``name (type): text`` items, continued on deeper-indented lines."""
    out: dict[str, str] = {}
    header, item_indent, current = _indent(lines[start]), None, None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        indent = _indent(line)
        if indent <= header:
            break
        item_indent = indent if item_indent is None else item_indent
        match = _GOOGLE_ITEM.match(line.strip())
        if indent == item_indent and match:
            current = match.group(1)
            out[current] = match.group(2).strip()
        elif current and indent > item_indent:
            out[current] = f"{out[current]} {line.strip()}".strip()
    return out


def _numpy_params(lines: list[str], start: int) -> dict[str, str]:
    """``Parameters`` / ``----------`` then ``name : type`` items with indented text below."""
    out: dict[str, str] = {}
    header, names = _indent(lines[start]), []
    for i in range(start + 2, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        if _indent(line) <= header:
            match = _NUMPY_ITEM.match(line.strip())
            if _section_kind(lines, i) or not match:
                break
            names = [n.strip().lstrip("*") for n in match.group(1).split(",")]
            out.update({n: "" for n in names})
        else:
            for n in names:
                out[n] = f"{out[n]} {line.strip()}".strip()
    return out


def _rest_param(lines: list[str], start: int) -> dict[str, str]:
    """``:param name: text`` (or ``:param type name:``), continued on deeper-indented lines."""
    match = _REST_PARAM.match(lines[start].strip())
    text = match.group(2).strip()
    for line in lines[start + 1:]:
        if not line.strip() or _indent(line) <= _indent(lines[start]) or line.strip().startswith(":"):
            break
        text = f"{text} {line.strip()}"
    return {match.group(1): text}


# --------------------------------------------------------------------------- canonical schema


def json_type(value: Any) -> str | None:
    """The JSON type of a Python value (bool before int: True is an int in Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None


def _fits(value: Any, type_name: str) -> bool:
    """Whether a value is of a JSON type (2.0 is an integer, 2 is a number)."""
    kind = json_type(value)
    if kind == "number" and type_name == "integer":
        return value.is_integer()
    return kind == type_name or (type_name == "number" and kind == "integer")


def _enum_members(enum: list, type_name: str | None) -> list:
    """The enum members a node of this type can take. Members of another type never match and
    are left out; when none fits but some are the type written as text (``"3"`` for an integer,
    ``"True"`` for a boolean, as tool authors often write them), those are read as the type."""
    if type_name is None:
        return list(enum)
    fitting = [v for v in enum if _fits(v, type_name)]
    if fitting:
        return fitting
    read = [_coerce(v, {"type": type_name}) for v in enum if isinstance(v, str)]
    return [v for i, v in enumerate(read) if _fits(v, type_name) and v not in read[:i]]


def _common_type(values: list) -> str | None:
    """The one JSON type all values share (integers and numbers together are numbers)."""
    kinds = {json_type(v) for v in values}
    if kinds == {"integer", "number"}:
        return "number"
    return kinds.pop() if len(kinds) == 1 and None not in kinds else None


class _Canonicalizer:
    """Converts one tool's parameter schema: first inline every $ref, then rewrite each node."""

    def __init__(self, tool: str, root: Any):
        self.tool, self.root = tool, root

    def error(self, path: str, problem: str) -> ToolSchemaError:
        return ToolSchemaError(self.tool, path, problem)

    def convert(self, schema: Any, path: str) -> dict:
        return self.canon(self.inline(schema, path, ()), path)

    # --- pass 1: references

    def inline(self, node: Any, path: str, refs: tuple[str, ...]) -> Any:
        """A copy of ``node`` with every ``$ref`` replaced by its target; cycles are errors."""
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = node["$ref"]
            if ref in refs:
                raise self.error(path, f"recursive schema: {ref!r} refers back to itself")
            target = self.inline(self.resolve(ref, f"{path}.$ref"), path, refs + (ref,))
            rest = {k: v for k, v in node.items() if k != "$ref"}
            if not rest:
                return target
            # Keywords beside $ref apply too; listing them first lets their annotations win.
            return {"allOf": [self.inline(rest, path, refs), target]}
        out = {}
        for key, value in node.items():
            if key in ("$defs", "definitions"):
                continue
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                value = {k: self.inline(v, f"{path}.{key}.{k}", refs) for k, v in value.items()}
            elif (key in _SCHEMA_LISTS or key == "items") and isinstance(value, list):
                value = [self.inline(v, f"{path}.{key}[{i}]", refs) for i, v in enumerate(value)]
            elif key in _SCHEMA_ONE:
                value = self.inline(value, f"{path}.{key}", refs)
            else:
                value = copy.deepcopy(value)
            out[key] = value
        return out

    def resolve(self, ref: Any, path: str) -> Any:
        """Follow a JSON pointer inside this schema (``#/$defs/Name``)."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.error(path, f"unsupported reference {ref!r}: only '#/...' pointers into the same schema work")
        node = self.root
        for raw in [p for p in ref[1:].split("/") if p]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise self.error(path, f"unresolvable reference {ref!r}")
        return node

    # --- pass 2: nodes

    def canon(self, node: Any, path: str) -> dict:
        if node is True:
            return {}
        if not isinstance(node, dict):
            what = "the schema `false` (accepts no value)" if node is False else type(node).__name__
            raise self.error(path, f"expected a schema object, got {what}")
        node = {_SNAKE_CASE.get(k, k): v for k, v in node.items()}
        node = self.merge_all_of(node, path)
        for key in node:
            if key in _UNSUPPORTED:
                raise self.error(f"{path}.{key}", f"unsupported keyword {key!r}: Needle cannot enforce it")
        for key in ("anyOf", "oneOf"):
            if key in node:
                return self.union(node, key, path)
        types = self.type_names(node.get("type"), f"{path}.type")
        if node.get("nullable") is True and types and "null" not in types:
            types.append("null")
        if len(types) <= 1:
            return self.typed(node, types[0] if types else None, path)
        return self.split_types(node, types, path)

    def type_names(self, raw: Any, path: str) -> list[str]:
        """Canonical type names of a ``type`` value; [] means any value."""
        if raw is None:
            return []
        if not isinstance(raw, list) or not raw:
            if not isinstance(raw, str):
                raise self.error(path, f"type must be a string or a non-empty list of strings, got {raw!r}")
            raw = [raw]
        out: list[str] = []
        for name in raw:
            if not isinstance(name, str):
                raise self.error(path, f"type must be a string or a non-empty list of strings, got {name!r}")
            key = name.strip().lower()
            canonical = _TYPE_ALIASES.get(key, key)
            if canonical is None:
                return []
            if canonical not in JSON_TYPES:
                raise self.error(path, f"unknown type {name!r} (expected one of {', '.join(JSON_TYPES)})")
            if canonical not in out:
                out.append(canonical)
        return out

    def split_types(self, node: dict, types: list[str], path: str) -> dict:
        """A node of several types becomes anyOf, one branch per type (enum members split too)."""
        enum = node.get("enum")
        body = {k: v for k, v in node.items() if k not in ("description", "default", "nullable", "type")}
        branches = []
        for t in types:
            if isinstance(enum, list) and enum and not _enum_members(enum, t):
                continue  # a type no enum member has: the branch could never match
            branches.append({"type": "null"} if t == "null" else self.typed(body, t, path))
        if not branches:
            raise self.error(f"{path}.enum", f"no enum member has any of the types {', '.join(types)}")
        return self.union_node(node, "anyOf", branches)

    def union(self, node: dict, key: str, path: str) -> dict:
        """anyOf / oneOf: canonical branches; constraints written beside them go into each."""
        raw = node[key]
        if not isinstance(raw, list) or not raw:
            raise self.error(f"{path}.{key}", f"{key} must be a non-empty list of schemas")
        other = "oneOf" if key == "anyOf" else "anyOf"
        shared = {k: v for k, v in node.items() if (k in _ASSERTIONS and k != "nullable") or k == other}
        branches = []
        for i, branch in enumerate(raw):
            where = f"{path}.{key}[{i}]"
            if shared:
                if not isinstance(branch, (dict, bool)):
                    raise self.error(where, f"expected a schema object, got {type(branch).__name__}")
                branch = {"allOf": [shared, branch]} if branch is not True else shared
            branches.append(self.canon(branch, where))
        if node.get("nullable") is True:
            branches.append({"type": "null"})
        return self.union_node(node, key, branches)

    def union_node(self, node: dict, key: str, branches: list[dict]) -> dict:
        """Assemble a union: flatten nested anyOf, null last, collapse a single branch."""
        if key == "anyOf":
            flat: list[dict] = []
            for branch in branches:
                inner = branch.get("anyOf") if set(branch) == {"anyOf"} else None
                for b in inner or [branch]:
                    if b not in flat:
                        flat.append(b)
            branches = [b for b in flat if b != {"type": "null"}] + [b for b in flat if b == {"type": "null"}]
        notes = {k: copy.deepcopy(node[k]) for k in ("description", "default") if k in node}
        if not isinstance(notes.get("description", ""), str):
            del notes["description"]
        if len(branches) == 1:
            return {**branches[0], **notes}
        return {key: branches, **notes}

    def merge_all_of(self, node: dict, path: str) -> dict:
        """Fold every allOf part into the node itself (parts may bring their own allOf)."""
        while "allOf" in node:
            parts = node["allOf"]
            if not isinstance(parts, list) or not parts:
                raise self.error(f"{path}.allOf", "allOf must be a non-empty list of schemas")
            merged = {k: v for k, v in node.items() if k != "allOf"}
            for i, part in enumerate(parts):
                if part is True:
                    continue
                if not isinstance(part, dict):
                    raise self.error(f"{path}.allOf[{i}]", f"expected a schema object, got {part!r}")
                merged = self.merge(merged, {_SNAKE_CASE.get(k, k): v for k, v in part.items()}, f"{path}.allOf[{i}]")
            node = merged
        return node

    def merge(self, a: dict, b: dict, path: str) -> dict:
        """Both schemas at once: the conjunction as one node, or an error where they conflict."""
        out = dict(a)
        for key, value in b.items():
            if key not in out or out[key] == value:
                out[key] = value
                continue
            current = out[key]
            if key in ("description", "default", "title", "examples", "$comment"):
                continue  # annotations: the first part wins
            if key == "type":
                out[key] = self.merge_types(current, value, f"{path}.type")
            elif key == "properties" and isinstance(current, dict) and isinstance(value, dict):
                props = dict(current)
                for name, sub in value.items():
                    if name in props and isinstance(props[name], dict) and isinstance(sub, dict):
                        props[name] = {"allOf": [props[name], sub]}
                    else:
                        props[name] = sub
                out[key] = props
            elif key == "required" and isinstance(current, list) and isinstance(value, list):
                out[key] = current + [k for k in value if k not in current]
            elif key == "allOf" and isinstance(current, list) and isinstance(value, list):
                out[key] = current + value
            elif key == "enum" and isinstance(current, list) and isinstance(value, list):
                out[key] = [v for v in current if v in value]
                if not out[key]:
                    raise self.error(f"{path}.enum", "allOf parts have no enum member in common")
            elif key in _LOWER_BOUNDS | _UPPER_BOUNDS and _is_number(current) and _is_number(value):
                out[key] = max(current, value) if key in _LOWER_BOUNDS else min(current, value)
            else:
                problem = f"allOf parts disagree on {key!r} ({_short(current)} vs {_short(value)})"
                raise self.error(f"{path}.{key}", problem)
        return out

    def merge_types(self, a: Any, b: Any, path: str) -> Any:
        """The types both parts allow (an integer is also a number; no type allows all)."""
        left, right = self.type_names(a, path), self.type_names(b, path)
        if not left or not right:
            return b if not left else a
        both = [t for t in left if t in right or (t == "integer" and "number" in right)]
        both += [t for t in right if t == "integer" and "number" in left and t not in both]
        if not both:
            raise self.error(path, f"allOf parts have no type in common ({a!r} and {b!r})")
        return both[0] if len(both) == 1 else both

    def typed(self, node: dict, t: str | None, path: str) -> dict:
        """One node of a single type (or none): keep only the keywords that type can use."""
        if t is None:
            if "properties" in node or "additionalProperties" in node:
                t = "object"
            elif "items" in node or "prefixItems" in node:
                t = "array"
        if t == "array" and isinstance(node.get("enum"), list) and not any(isinstance(v, list) for v in node["enum"]):
            node = self.enum_onto_items(node)
        out: dict[str, Any] = {"type": t} if t else {}
        description = node.get("description")
        if isinstance(description, str):
            out["description"] = description
        if "enum" in node:
            enum = node["enum"]
            if not isinstance(enum, list) or not enum:
                raise self.error(f"{path}.enum", f"enum must be a non-empty list, got {_short(enum)}")
            members = copy.deepcopy(_enum_members(enum, t))
            if not members:
                raise self.error(f"{path}.enum", f"no enum member is of type {t}")
            out["enum"] = members
        if "const" in node:
            out["const"] = copy.deepcopy(node["const"])
        if t is None:
            members = out.get("enum", [out["const"]] if "const" in out else [])
            inferred = _common_type(members) if members else None
            if inferred:
                out = {"type": inferred, **out}
                t = inferred
        if t == "object":
            self.object_keywords(node, out, path)
        elif t == "array":
            self.array_keywords(node, out, path)
        elif t in _TYPE_KEYWORDS:
            self.scalar_keywords(node, out, t, path)
        if "default" in node:
            out["default"] = copy.deepcopy(node["default"])
        return out

    def scalar_keywords(self, node: dict, out: dict, t: str, path: str) -> None:
        """Bounds, lengths, pattern and format, checked so the decoder never meets nonsense."""
        for key in _TYPE_KEYWORDS[t]:
            if key not in node:
                continue
            value, where = node[key], f"{path}.{key}"
            if key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
                bound = "minimum" if key == "exclusiveMinimum" else "maximum"
                if value and bound in out:  # draft 4: a flag on minimum / maximum
                    out[key] = out.pop(bound)
                continue
            if key in _NUMBERS:
                if not _is_number(value):
                    raise self.error(where, f"{key} must be a number, got {value!r}")
                if key == "multipleOf" and value <= 0:
                    raise self.error(where, f"multipleOf must be greater than 0, got {value!r}")
            elif key in _COUNTS:
                value = self.count(value, where)
            elif key == "pattern":
                if not isinstance(value, str):
                    raise self.error(where, f"pattern must be a string, got {value!r}")
                try:
                    re.compile(value)
                except re.error as exc:
                    raise self.error(where, f"invalid regular expression {value!r}: {exc}") from None
            elif key == "format" and not isinstance(value, str):
                raise self.error(where, f"format must be a string, got {value!r}")
            out[key] = value
        self.check_bounds(out, path)

    def count(self, value: Any, path: str) -> int:
        """A length or item count (Gemini's REST form sends int64 counts as strings)."""
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.error(path, f"expected a non-negative integer, got {value!r}")
        return value

    def check_bounds(self, out: dict, path: str) -> None:
        for low, high in _BOUND_PAIRS:
            if low in out and high in out and out[low] > out[high]:
                raise self.error(f"{path}.{low}", f"{low} ({out[low]}) is greater than {high} ({out[high]})")

    def enum_onto_items(self, node: dict) -> dict:
        """An array's enum of non-arrays (a common slip: no array could equal one) is its items' enum."""
        items = node.get("items")
        if not isinstance(items, (dict, type(None))) or (isinstance(items, dict) and "enum" in items):
            return node  # nowhere to move it: left for the usual "no enum member" error
        moved = {k: v for k, v in node.items() if k != "enum"}
        moved["items"] = {**(items or {}), "enum": node["enum"]}
        return moved

    def array_keywords(self, node: dict, out: dict, path: str) -> None:
        items, prefix, prefix_key = node.get("items"), node.get("prefixItems"), "prefixItems"
        if isinstance(items, list):  # drafts before 2020-12 wrote tuples as a list under items
            items, prefix, prefix_key = node.get("additionalItems"), items, "items"
        if prefix is not None:
            if not isinstance(prefix, list) or not prefix:
                raise self.error(f"{path}.{prefix_key}", f"{prefix_key} must be a non-empty list of schemas")
            members = [self.canon(p, f"{path}.{prefix_key}[{i}]") for i, p in enumerate(prefix)]
            if items not in (None, False):
                members.append(self.canon(items, f"{path}.items"))
            out["items"] = self.common_items(members, path)
        else:
            out["items"] = {} if items is None else self.canon(items, f"{path}.items")
        for key in ("minItems", "maxItems"):
            if key in node:
                out[key] = self.count(node[key], f"{path}.{key}")
        unique = node.get("uniqueItems")
        if unique is not None:
            if not isinstance(unique, bool):
                raise self.error(f"{path}.uniqueItems", f"uniqueItems must be true or false, got {unique!r}")
            out["uniqueItems"] = unique
        self.check_bounds(out, path)

    def common_items(self, members: list[dict], path: str) -> dict:
        """One ``items`` schema for a tuple: the member when all agree, their shared type, or any."""
        if all(m == members[0] for m in members):
            return members[0]
        types = {m.get("type") for m in members}
        return self.canon({"type": types.pop()}, path) if len(types) == 1 and None not in types else {}

    def object_keywords(self, node: dict, out: dict, path: str) -> None:
        given = node.get("properties")
        if given is not None and not isinstance(given, dict):
            raise self.error(f"{path}.properties", f"properties must be an object, got {type(given).__name__}")
        properties = {}
        for key, sub in (given or {}).items():
            if not isinstance(key, str) or not key or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in key):
                problem = f"invalid property name {key!r}: use a non-empty name without control characters"
                raise self.error(f"{path}.properties", problem)
            properties[key] = self.canon(sub, f"{path}.properties.{key}")
        required = node.get("required", [])
        if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
            raise self.error(f"{path}.required", f"required must be a list of property names, got {_short(required)}")
        for key in required:
            if key not in properties:
                raise self.error(f"{path}.required", f"required key {key!r} is not a property")
        out["properties"] = properties
        out["required"] = [k for k in properties if k in required]
        extra = node.get("additionalProperties", True if given is None else None)
        if isinstance(extra, bool):
            out["additionalProperties"] = extra
        elif extra is not None:
            out["additionalProperties"] = self.canon(extra, f"{path}.additionalProperties")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- call validation

_INT_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")
_NUMBER_TEXT = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")


def _coerce(value: Any, schema: dict) -> Any:
    """A copy of ``value`` with unambiguous scalar fixes; anything doubtful is left as it is."""
    union = schema.get("anyOf") or schema.get("oneOf")
    if union:
        if not any(True for _ in _problems(value, schema, "")):
            return value
        for branch in union:
            fixed = _coerce(value, branch)
            if not any(True for _ in _problems(fixed, branch, "")):
                return fixed
        return value
    kind = schema.get("type")
    if kind == "object" and isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: _coerce(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    if kind == "array" and isinstance(value, list):
        return [_coerce(v, schema.get("items", {})) for v in value]
    if isinstance(value, bool):
        return value
    if kind == "integer":
        if isinstance(value, str) and _INT_TEXT.match(value):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
    if kind == "number":
        if isinstance(value, str) and _NUMBER_TEXT.match(value) and math.isfinite(float(value)):
            return float(value)
        if isinstance(value, int):
            return float(value)
    if kind == "boolean" and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def _problems(value: Any, schema: dict, root: str) -> Iterator[tuple[str, str]]:
    """(JSON path, problem) pairs, shallowest first; one pair per missing or unexpected key."""
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: len(e.absolute_path))
    seen = set()
    for error in errors:
        base = root + "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
        found: list[tuple[str, str]]
        if error.validator == "required" and isinstance(error.instance, dict):
            missing = [k for k in error.validator_value if k not in error.instance]
            found = [(f"{base}.{k}", "required property missing") for k in missing]
        elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
            declared = error.schema.get("properties", {})
            found = [(f"{base}.{k}", "unexpected property") for k in error.instance if k not in declared]
        else:
            found = [(base, error.message)]
        for item in found:
            if item not in seen:
                seen.add(item)
                yield item


def name_words(name: str) -> list[str]:
    """``getWeatherForecast`` / ``get_weather.forecast`` -> ``["get", "weather", "forecast"]``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", name))
    return [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]
