"""Tests of needle_core.schema: every tool form, every canonical-form rule, every error."""

from __future__ import annotations

import enum
import json
import operator
import warnings
from typing import Annotated, Literal, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from needle_core.errors import ToolCallError, ToolSchemaError
from needle_core.schema import ToolSpec, to_tool_spec, to_tool_specs, validate_call, validate_value

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["location"],
}
WEATHER = {"name": "get_weather", "description": "Get the weather.", "parameters": WEATHER_PARAMS}
EXPECTED_WEATHER = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["location"],
}


def params_of(schema: dict, name: str = "t") -> dict:
    """Canonical parameters of a bare tool dict with the given schema."""
    return to_tool_spec({"name": name, "description": "", "parameters": schema}).parameters


def prop(schema: dict) -> dict:
    """Canonical form of one property schema."""
    return params_of({"type": "object", "properties": {"x": schema}})["properties"]["x"]


def schema_error(schema: dict) -> str:
    with pytest.raises(ToolSchemaError) as info:
        params_of(schema, name="bad_tool")
    return str(info.value)


def assert_idempotent(spec: ToolSpec) -> None:
    assert to_tool_spec(spec.to_dict()) == spec
    assert to_tool_spec(spec) == spec
    assert to_tool_spec(json.dumps(spec.to_openai())) == spec


# --------------------------------------------------------------------------- dict forms


def test_openai_wrapped_and_bare_function_dicts():
    wrapped = to_tool_spec({"type": "function", "function": WEATHER})
    bare = to_tool_spec(WEATHER)
    assert wrapped == bare
    assert bare.name == "get_weather" and bare.description == "Get the weather."
    assert bare.parameters == EXPECTED_WEATHER
    assert bare.to_openai() == {"type": "function", "function": bare.to_dict()}
    assert set(bare.to_dict()) == {"name", "description", "parameters"}


def test_anthropic_input_schema():
    spec = to_tool_spec({"name": "get_weather", "description": "Get the weather.", "input_schema": WEATHER_PARAMS})
    assert spec.parameters == EXPECTED_WEATHER


def test_mcp_tool_definition():
    spec = to_tool_spec(
        {
            "name": "read_file",
            "title": "Read File",
            "description": "Read a file.",
            "inputSchema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"path": {"type": "string", "title": "Path"}},
                "required": ["path"],
                "additionalProperties": False,
            },
            "annotations": {"readOnlyHint": True},
        }
    )
    assert spec.name == "read_file" and spec.description == "Read a file."
    assert spec.parameters == {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
        "additionalProperties": False,
    }


def test_mcp_object_without_properties_means_no_arguments():
    spec = to_tool_spec({"name": "ping", "inputSchema": {"type": "object"}})
    assert spec.parameters == {"type": "object", "properties": {}, "required": []}


def test_gemini_function_declaration():
    spec = to_tool_spec(
        {
            "name": "find_movies",
            "description": "Find movies.",
            "parameters": {
                "type": "OBJECT",
                "properties": {
                    "genre": {"type": "STRING", "enum": ["drama", "comedy"], "format": "enum"},
                    "year": {"type": "INTEGER", "format": "int32", "nullable": True, "description": "Year."},
                    "tags": {"type": "ARRAY", "items": {"type": "STRING"}, "min_items": "1", "maxItems": "3"},
                    "score": {"type": "NUMBER", "minimum": 0, "maximum": 10},
                },
                "required": ["genre"],
                "propertyOrdering": ["genre", "year", "tags", "score"],
            },
        }
    )
    props = spec.parameters["properties"]
    assert props["genre"] == {"type": "string", "enum": ["drama", "comedy"], "format": "enum"}
    assert props["year"] == {
        "anyOf": [{"type": "integer", "format": "int32"}, {"type": "null"}],
        "description": "Year.",
    }
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}
    assert props["score"] == {"type": "number", "minimum": 0, "maximum": 10}
    assert "propertyOrdering" not in spec.parameters


def test_bfcl_gorilla_types():
    spec = to_tool_spec(
        {
            "name": "math.factorial",
            "description": "Calculate the factorial of a number.",
            "parameters": {
                "type": "dict",
                "properties": {
                    "number": {"type": "integer", "description": "The number."},
                    "ratio": {"type": "float", "description": "A ratio.", "default": 0.5},
                    "point": {"type": "tuple", "items": {"type": "float"}},
                    "anything": {"type": "any", "description": "Whatever."},
                    "names": {"type": "array", "items": {"type": "string"}},
                    "flag": {"type": "boolean"},
                    "options": {"type": "dict", "properties": {"depth": {"type": "integer"}}},
                },
                "required": ["number"],
            },
        }
    )
    props = spec.parameters["properties"]
    assert spec.name == "math.factorial"
    assert props["number"] == {"type": "integer", "description": "The number."}
    assert props["ratio"] == {"type": "number", "description": "A ratio.", "default": 0.5}
    assert props["point"] == {"type": "array", "items": {"type": "number"}}
    assert props["anything"] == {"description": "Whatever."}
    assert props["names"] == {"type": "array", "items": {"type": "string"}}
    assert props["flag"] == {"type": "boolean"}
    assert props["options"] == {"type": "object", "properties": {"depth": {"type": "integer"}}, "required": []}
    assert spec.parameters["required"] == ["number"]


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "function", "function": WEATHER},
        WEATHER,
        {"name": "get_weather", "description": "Get the weather.", "input_schema": WEATHER_PARAMS},
        {"name": "get_weather", "description": "Get the weather.", "inputSchema": WEATHER_PARAMS},
        {"name": "get_weather", "description": "Get the weather.", "parameters": {**WEATHER_PARAMS, "type": "dict"}},
    ],
    ids=["openai", "bare", "anthropic", "mcp", "bfcl"],
)
def test_json_string_of_each_dict_form(tool):
    spec = to_tool_spec(json.dumps(tool))
    assert spec == to_tool_spec(tool)
    assert spec.parameters == EXPECTED_WEATHER


def test_to_tool_specs_accepts_a_list_or_a_json_string_of_a_list():
    other = {"name": "get_time", "description": "Time.", "parameters": {"type": "object", "properties": {}}}
    specs = to_tool_specs([WEATHER, other])
    assert [s.name for s in specs] == ["get_weather", "get_time"]
    assert to_tool_specs(json.dumps([WEATHER, other])) == specs


def test_tool_without_parameters_gets_an_empty_object():
    expected = {"type": "object", "properties": {}, "required": []}
    assert to_tool_spec({"name": "now", "description": "Current time."}).parameters == expected
    assert to_tool_spec({"name": "now", "parameters": {}}).parameters == expected
    assert to_tool_spec({"name": "now", "parameters": {"type": "dict", "properties": {}}}).parameters == expected


# --------------------------------------------------------------------------- Python forms


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Location(BaseModel):
    """A place on Earth."""

    city: str = Field(description="City name")
    country: str | None = Field(None, description="ISO country code")


def test_google_docstring_function_with_rich_types():
    def get_weather(
        location: Location,
        unit: Unit = Unit.CELSIUS,
        days: Annotated[int, Field(ge=1, le=10)] = 3,
        code: Annotated[str, Field(pattern=r"^[A-Z]{3}$", min_length=3)] = "ABC",
        mode: Literal["fast", "slow"] = "fast",
        limit: Optional[int] = None,  # noqa: UP045 - the typing.Optional spelling is what is tested
        tags: list[str] = [],  # noqa: B006 - never called: only the declared default matters
        weights: dict[str, float] = {},  # noqa: B006
        pair: tuple[int, int] = (0, 0),
        mixed: tuple[int, str] = (0, ""),
        anything=None,
    ) -> str:
        """Get the weather forecast.

        Uses the national service. This second paragraph is not in the description.

        Args:
            location: Where to look.
            unit (Unit): Temperature unit,
                for the whole forecast.
            days: Number of days.
            limit: At most this many rows.

        Returns:
            The forecast.
        """
        return ""

    spec = to_tool_spec(get_weather)
    props = spec.parameters["properties"]
    assert spec.name == "get_weather"
    assert spec.description == "Get the weather forecast."
    assert spec.parameters["required"] == ["location"]
    assert props["location"] == {
        "type": "object",
        "description": "Where to look.",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "country": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "ISO country code",
                "default": None,
            },
        },
        "required": ["city"],
    }
    assert props["unit"] == {
        "type": "string",
        "description": "Temperature unit, for the whole forecast.",
        "enum": ["celsius", "fahrenheit"],
        "default": "celsius",
    }
    assert props["days"] == {
        "type": "integer",
        "description": "Number of days.",
        "minimum": 1,
        "maximum": 10,
        "default": 3,
    }
    assert props["code"] == {"type": "string", "minLength": 3, "pattern": "^[A-Z]{3}$", "default": "ABC"}
    assert props["mode"] == {"type": "string", "enum": ["fast", "slow"], "default": "fast"}
    assert props["limit"] == {
        "anyOf": [{"type": "integer"}, {"type": "null"}],
        "description": "At most this many rows.",
        "default": None,
    }
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "default": []}
    assert props["weights"] == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": {"type": "number"},
        "default": {},
    }
    assert props["pair"] == {
        "type": "array",
        "items": {"type": "integer"},
        "minItems": 2,
        "maxItems": 2,
        "default": [0, 0],
    }
    assert props["mixed"]["items"] == {}
    assert props["anything"] == {"default": None}
    assert_idempotent(spec)


def test_numpy_docstring():
    def search(query: str, top_k: int = 5) -> list:
        """Search the index.

        Parameters
        ----------
        query : str
            The text to look for,
            in any language.
        top_k : int, optional
            How many hits to return.

        Returns
        -------
        list
            The hits.
        """
        return []

    spec = to_tool_spec(search)
    assert spec.description == "Search the index."
    assert spec.parameters["properties"]["query"]["description"] == "The text to look for, in any language."
    assert spec.parameters["properties"]["top_k"] == {
        "type": "integer",
        "description": "How many hits to return.",
        "default": 5,
    }
    assert spec.parameters["required"] == ["query"]


def test_rest_docstring():
    def send_email(to: str, body: str, urgent: bool = False) -> None:
        """Send an email
        to one person.

        :param to: Recipient address.
        :param str body: The message text,
            plain only.
        :param urgent: Mark as urgent.
        :returns: Nothing.
        """

    spec = to_tool_spec(send_email)
    props = spec.parameters["properties"]
    assert spec.description == "Send an email to one person."
    assert props["to"]["description"] == "Recipient address."
    assert props["body"]["description"] == "The message text, plain only."
    assert props["urgent"] == {"type": "boolean", "description": "Mark as urgent.", "default": False}


def test_field_description_wins_over_docstring_and_field_default():
    def f(n: Annotated[int, Field(description="from Field")], m: int = Field(2, ge=0, description="m")) -> int:
        """Do f.

        Args:
            n: from docstring
        """
        return n

    props = to_tool_spec(f).parameters["properties"]
    assert props["n"] == {"type": "integer", "description": "from Field"}
    assert props["m"] == {"type": "integer", "description": "m", "minimum": 0, "default": 2}


def test_function_without_docstring_or_parameters():
    def ping():
        return "pong"

    spec = to_tool_spec(ping)
    assert spec == ToolSpec("ping", "", {"type": "object", "properties": {}, "required": []})


def test_parameter_names_that_clash_with_pydantic():
    def f(model_config: str, _private: int, schema: bool) -> None:
        """Odd names."""

    assert list(to_tool_spec(f).parameters["properties"]) == ["model_config", "_private", "schema"]


def test_string_annotations_are_resolved():
    # This module uses `from __future__ import annotations`: every annotation here is a string.
    def f(x: int, y: Optional[str] = None) -> None:  # noqa: UP045
        """Deferred annotations."""

    props = to_tool_spec(f).parameters["properties"]
    assert props["x"] == {"type": "integer"}
    assert props["y"]["anyOf"] == [{"type": "string"}, {"type": "null"}]


def test_bound_method_and_callable_object():
    class Calculator:
        """Adds numbers."""

        def add(self, a: int, b: int) -> int:
            """Add two integers."""
            return a + b

        def __call__(self, expression: str) -> float:
            return 0.0

    add = to_tool_spec(Calculator().add)
    assert add.name == "add" and add.description == "Add two integers."
    assert add.parameters["required"] == ["a", "b"]
    call = to_tool_spec(Calculator())
    assert call.name == "Calculator" and call.description == "Adds numbers."
    assert call.parameters["properties"] == {"expression": {"type": "string"}}


def test_callable_without_signature_is_a_clear_error():
    with pytest.raises(ToolSchemaError, match=r"tool 'itemgetter': cannot read a signature"):
        to_tool_spec(operator.itemgetter(1))


class Connection:
    """Not something a model can produce."""


def test_untranslatable_annotation_names_the_parameter():
    def query(sql: str, conn: Connection) -> None:
        """Run SQL."""

    with pytest.raises(ToolSchemaError, match=r"tool 'query': parameters\.properties\.conn: cannot describe type"):
        to_tool_spec(query)


def test_pydantic_model_class():
    class BookFlight(BaseModel):
        """Book a flight between two airports."""

        origin: str = Field(description="IATA code of the departure airport")
        destination: str = Field(description="IATA code of the arrival airport")
        passengers: int = Field(1, ge=1, le=9, description="Number of travellers")
        home: Location | None = None

    spec = to_tool_spec(BookFlight)
    assert spec.name == "BookFlight"
    assert spec.description == "Book a flight between two airports."
    assert spec.parameters["required"] == ["origin", "destination"]
    assert spec.parameters["properties"]["passengers"] == {
        "type": "integer",
        "description": "Number of travellers",
        "minimum": 1,
        "maximum": 9,
        "default": 1,
    }
    home = spec.parameters["properties"]["home"]
    assert home["anyOf"][0]["properties"]["city"] == {"type": "string", "description": "City name"}
    assert home["anyOf"][1] == {"type": "null"}
    assert "description" not in spec.parameters and "$defs" not in spec.parameters
    assert_idempotent(spec)


def test_recursive_pydantic_model_is_an_error():
    class TreeNode(BaseModel):
        """A tree."""

        children: list[TreeNode] = []

    TreeNode.model_rebuild()
    with pytest.raises(
        ToolSchemaError, match=r"tool 'TreeNode': parameters\.properties\.children\.items: recursive schema"
    ):
        to_tool_spec(TreeNode)


# --------------------------------------------------------------------------- LangChain


def test_langchain_tool_decorator_splits_the_docstring():
    pytest.importorskip("langchain_core")
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str, unit: Literal["c", "f"] = "c") -> str:
        """Get the weather.

        More detail that is not part of the description.

        Args:
            city: The city name.
            unit: Temperature unit.
        """
        return ""

    spec = to_tool_spec(get_weather)
    assert spec.name == "get_weather" and spec.description == "Get the weather."
    assert spec.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city name."},
            "unit": {"type": "string", "description": "Temperature unit.", "enum": ["c", "f"], "default": "c"},
        },
        "required": ["city"],
    }
    assert_idempotent(spec)


def test_langchain_structured_tool_from_function():
    pytest.importorskip("langchain_core")
    from langchain_core.tools import StructuredTool

    class Args(BaseModel):
        a: int = Field(description="first")
        b: int | None = Field(None, description="second")

    def add(a: int, b: int | None = None) -> int:
        return a + (b or 0)

    spec = to_tool_spec(StructuredTool.from_function(add, name="adder", description="Add numbers.", args_schema=Args))
    assert spec.name == "adder" and spec.description == "Add numbers."
    assert spec.parameters["properties"]["a"] == {"type": "integer", "description": "first"}
    assert spec.parameters["properties"]["b"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
    assert spec.parameters["required"] == ["a"]


def test_langchain_basetool_subclass_with_args_schema():
    pytest.importorskip("langchain_core")
    from langchain_core.tools import BaseTool

    class CalcInput(BaseModel):
        expression: str = Field(description="Arithmetic expression")

    class Calculator(BaseTool):
        name: str = "calculator"
        description: str = "Evaluate arithmetic."
        args_schema: type[BaseModel] = CalcInput

        def _run(self, expression: str) -> str:
            return expression

    spec = to_tool_spec(Calculator())
    assert spec == ToolSpec(
        "calculator",
        "Evaluate arithmetic.",
        {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "Arithmetic expression"}},
            "required": ["expression"],
        },
    )


def test_langchain_runnable_as_tool():
    pytest.importorskip("langchain_core")
    from langchain_core.runnables import RunnableLambda

    runnable = RunnableLambda(lambda x: x["a"] * x["b"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        as_tool = runnable.as_tool(name="multiply", description="Multiply two numbers.", arg_types={"a": int, "b": int})
    spec = to_tool_spec(as_tool)
    assert spec.name == "multiply" and spec.description == "Multiply two numbers."
    assert spec.parameters == {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }


# --------------------------------------------------------------------------- LlamaIndex


def test_llamaindex_function_tool():
    pytest.importorskip("llama_index.core")
    from llama_index.core.tools import FunctionTool

    def lookup(term: str, limit: int = 3) -> str:
        """Look a term up in the glossary.

        Args:
            term: The word to define.
        """
        return ""

    spec = to_tool_spec(FunctionTool.from_defaults(lookup))
    assert spec.name == "lookup"
    assert spec.description == "Look a term up in the glossary."  # the signature prefix is gone
    assert spec.parameters == {
        "type": "object",
        "properties": {
            "term": {"type": "string", "description": "The word to define."},
            "limit": {"type": "integer", "default": 3},
        },
        "required": ["term"],
    }


def test_llamaindex_custom_basetool_metadata():
    pytest.importorskip("llama_index.core")
    from llama_index.core.tools.types import BaseTool, ToolMetadata

    class Query(BaseModel):
        query: str = Field(description="What to look for")

    class Search(BaseTool):
        @property
        def metadata(self) -> ToolMetadata:
            return ToolMetadata(name="search_docs", description="Search the docs.", fn_schema=Query)

        def __call__(self, input):
            return None

    class Plain(BaseTool):
        @property
        def metadata(self) -> ToolMetadata:
            return ToolMetadata(name="plain", description="A tool without a schema.")

        def __call__(self, input):
            return None

    search = to_tool_spec(Search())
    assert search.name == "search_docs" and search.description == "Search the docs."
    assert search.parameters["properties"] == {"query": {"type": "string", "description": "What to look for"}}
    plain = to_tool_spec(Plain())
    assert plain.parameters == {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}


# --------------------------------------------------------------------------- canonical-form rules


def test_type_list_with_null_becomes_anyof_with_hoisted_annotations():
    assert prop({"type": ["string", "null"], "description": "d", "default": None, "maxLength": 5}) == {
        "anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}],
        "description": "d",
        "default": None,
    }


def test_type_list_without_null_and_split_enum():
    assert prop({"type": ["integer", "string"]}) == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert prop({"type": ["string", "null"], "enum": ["a", None]}) == {
        "anyOf": [{"type": "string", "enum": ["a"]}, {"type": "null"}]
    }


def test_nullable_becomes_anyof():
    assert prop({"type": "integer", "nullable": True, "description": "n"}) == {
        "anyOf": [{"type": "integer"}, {"type": "null"}],
        "description": "n",
    }


def test_anyof_flattened_null_last_and_single_branch_collapsed():
    assert prop({"anyOf": [{"type": "null"}, {"anyOf": [{"type": "string"}, {"type": "integer"}]}]}) == {
        "anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]
    }
    assert prop({"anyOf": [{"type": "string", "title": "S"}], "description": "only"}) == {
        "type": "string",
        "description": "only",
    }


def test_oneof_is_kept():
    assert prop({"oneOf": [{"type": "string"}, {"type": "integer"}], "description": "id"}) == {
        "oneOf": [{"type": "string"}, {"type": "integer"}],
        "description": "id",
    }


def test_constraints_beside_anyof_go_into_each_branch():
    assert prop({"type": "object", "properties": {"a": {"type": "string"}}, "anyOf": [{"required": ["a"]}, {}]}) == {
        "anyOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": []},
        ]
    }


def test_allof_objects_are_merged():
    merged = prop(
        {
            "description": "outer",
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}, "required": ["a"]},
                {"type": "object", "properties": {"a": {"minimum": 5}, "b": {"type": "string"}}, "required": ["b"]},
                {"description": "ignored: the first annotation wins"},
            ],
        }
    )
    assert merged == {
        "type": "object",
        "description": "outer",
        "properties": {"a": {"type": "integer", "minimum": 5}, "b": {"type": "string"}},
        "required": ["a", "b"],
    }
    assert prop({"allOf": [{"type": "number"}, {"type": "integer", "maximum": 3}]}) == {"type": "integer", "maximum": 3}
    assert prop({"allOf": [{"enum": ["a", "b", "c"]}, {"enum": ["c", "b"]}]}) == {"type": "string", "enum": ["b", "c"]}


def test_object_always_has_properties_and_ordered_required():
    assert prop({"type": "object", "properties": {"b": {}, "a": {}}, "required": ["a", "b", "a"]}) == {
        "type": "object",
        "properties": {"b": {}, "a": {}},
        "required": ["b", "a"],
    }
    assert prop({"properties": {"a": {"type": "string"}}}) == {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": [],
    }


def test_additional_properties_rules():
    assert prop({"type": "object"}) == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": True,
    }
    assert prop({"type": "object", "additionalProperties": {"type": "string", "title": "V"}}) == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": {"type": "string"},
    }
    closed = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    assert prop(closed) == {**closed, "required": []}
    assert prop({"type": "object", "properties": {"a": {}}}) == {
        "type": "object",
        "properties": {"a": {}},
        "required": [],
    }


def test_array_rules():
    assert prop({"type": "array"}) == {"type": "array", "items": {}}
    assert prop({"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4, "uniqueItems": True}) == {
        "type": "array",
        "items": {"type": "string"},
        "minItems": 1,
        "maxItems": 4,
        "uniqueItems": True,
    }
    same = {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}]}
    assert prop(same) == {"type": "array", "items": {"type": "number"}}
    shared_type = {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0}, {"type": "integer"}]}
    assert prop(shared_type) == {"type": "array", "items": {"type": "integer"}}
    mixed = {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2}
    assert prop(mixed) == {"type": "array", "items": {}, "minItems": 2}
    nested = {"type": "array", "prefixItems": [{"type": "array", "items": {"type": "string"}}, {"type": "array"}]}
    assert prop(nested) == {"type": "array", "items": {"type": "array", "items": {}}}
    old_tuple = {"type": "array", "items": [{"type": "string"}, {"type": "string"}]}
    assert prop(old_tuple) == {"type": "array", "items": {"type": "string"}}


def test_kept_and_dropped_keywords():
    assert prop(
        {
            "type": "number",
            "title": "Price",
            "description": "In euros",
            "examples": [1.5],
            "x-vendor": 1,
            "$comment": "c",
            "minimum": 0,
            "exclusiveMaximum": 100,
            "multipleOf": 0.5,
            "minLength": 3,
            "default": 1.5,
        }
    ) == {
        "type": "number",
        "description": "In euros",
        "minimum": 0,
        "exclusiveMaximum": 100,
        "multipleOf": 0.5,
        "default": 1.5,
    }
    assert prop({"type": "string", "format": "date-time", "minimum": 3}) == {"type": "string", "format": "date-time"}


def test_draft4_boolean_exclusive_bounds_are_converted():
    assert prop(
        {"type": "integer", "minimum": 0, "exclusiveMinimum": True, "maximum": 9, "exclusiveMaximum": False}
    ) == {
        "type": "integer",
        "exclusiveMinimum": 0,
        "maximum": 9,
    }


def test_refs_and_definitions_are_inlined():
    schema = {
        "type": "object",
        "properties": {
            "unit": {"$ref": "#/$defs/Unit", "description": "Which unit"},
            "where": {"$ref": "#/definitions/Place"},
            "again": {"$ref": "#/definitions/Place"},
        },
        "$defs": {"Unit": {"type": "string", "enum": ["c", "f"], "description": "A unit", "title": "Unit"}},
        "definitions": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    }
    params = params_of(schema)
    place = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert params == {
        "type": "object",
        "properties": {
            "unit": {"type": "string", "description": "Which unit", "enum": ["c", "f"]},
            "where": place,
            "again": place,
        },
        "required": [],
    }


def test_enum_and_const_type_inference():
    assert prop({"enum": ["a", "b"]}) == {"type": "string", "enum": ["a", "b"]}
    assert prop({"enum": [1, 2.5]}) == {"type": "number", "enum": [1, 2.5]}
    assert prop({"enum": [True, False]}) == {"type": "boolean", "enum": [True, False]}
    assert prop({"enum": ["a", 1]}) == {"enum": ["a", 1]}
    assert prop({"const": 3}) == {"type": "integer", "const": 3}
    assert prop({}) == {}


def test_enum_members_must_fit_the_type():
    assert prop({"type": "integer", "enum": [1, 2.0, "3"]}) == {"type": "integer", "enum": [1, 2.0]}
    message = schema_error({"properties": {"n": {"type": "integer", "enum": ["one", "two"]}}})
    assert message == "tool 'bad_tool': parameters.properties.n.enum: no enum member is of type integer"


def test_enum_members_written_as_text_are_read_as_the_type():
    assert prop({"type": "integer", "enum": ["1", "2", "dontcare", "2"]}) == {"type": "integer", "enum": [1, 2]}
    assert prop({"type": "boolean", "enum": ["True", "False", "dontcare"]}) == {"type": "boolean", "enum": [True, False]}
    # null is left out too: no enum member is null
    assert prop({"type": ["number", "null"], "enum": ["0.5", "dontcare"]}) == {"type": "number", "enum": [0.5]}
    again = prop({"type": "boolean", "enum": [True, False]})
    assert prop(again) == again  # canonical specs convert to themselves


def test_an_array_enum_of_non_arrays_is_the_enum_of_its_items():
    metrics = {"type": "array", "items": {"type": "string"}, "enum": ["temperature", "humidity"]}
    assert prop(metrics) == {"type": "array", "items": {"type": "string", "enum": ["temperature", "humidity"]}}
    assert prop({"type": "array", "enum": [1, 2]}) == {"type": "array", "items": {"type": "integer", "enum": [1, 2]}}
    message = schema_error({"properties": {"m": {"type": "array", "items": {"enum": ["a"]}, "enum": ["b"]}}})
    assert message == "tool 'bad_tool': parameters.properties.m.enum: no enum member is of type array"


def test_var_positional_and_keyword_parameters_are_left_out():
    def f(a: int, *rest: int, b: str = "x", **extra: str) -> None:
        """Varargs."""

    params = to_tool_spec(f).parameters
    assert list(params["properties"]) == ["a", "b"] and params["required"] == ["a"]


def test_to_tool_specs_accepts_specs_again():
    specs = to_tool_specs([WEATHER, {"name": "now"}])
    assert to_tool_specs(specs) == specs
    assert to_tool_specs([s.to_openai() for s in specs]) == specs


def test_top_level_is_always_an_object():
    assert params_of({"properties": {"a": {"type": "string"}}}) == {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": [],
    }
    assert params_of({"type": "object", "title": "Args"}) == {"type": "object", "properties": {}, "required": []}


# --------------------------------------------------------------------------- idempotency


IDEMPOTENCY_CASES = [
    WEATHER,
    {"name": "g", "parameters": {"type": "object", "properties": {"x": {"type": ["string", "null"], "default": None}}}},
    {"name": "h", "parameters": {"type": "OBJECT", "properties": {"y": {"type": "STRING", "nullable": True}}}},
    {"name": "i", "parameters": {"type": "dict", "properties": {"z": {"type": "tuple", "items": {"type": "float"}}}}},
    {"name": "j", "parameters": {"type": "object", "properties": {"m": {"type": "object"}}}},
    {
        "name": "k",
        "parameters": {"properties": {"e": {"enum": [1, 2]}, "p": {"prefixItems": [{"type": "string"}, {}]}}},
    },
]


@pytest.mark.parametrize("tool", IDEMPOTENCY_CASES)
def test_converting_canonical_output_again_is_idempotent(tool):
    assert_idempotent(to_tool_spec(tool))


_scalar_schemas = st.sampled_from(
    [
        {"type": "string", "minLength": 1},
        {"type": "INTEGER", "minimum": 0},
        {"type": "float"},
        {"type": ["boolean", "null"]},
        {"type": "string", "nullable": True, "description": "n"},
        {"enum": ["x", "y"]},
        {"type": "any"},
        {},
    ]
)
_schemas = st.recursive(
    _scalar_schemas,
    lambda inner: st.one_of(
        st.builds(lambda items: {"type": "array", "items": items}, inner),
        st.builds(lambda parts: {"anyOf": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(
            lambda props: {"type": "object", "properties": props, "required": sorted(props)[:1]},
            st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
        ),
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(_schemas)
def test_idempotency_on_generated_schemas(schema):
    spec = to_tool_spec({"name": "gen", "parameters": {"type": "object", "properties": {"v": schema}}})
    assert_idempotent(spec)
    assert validate_value({}, spec.parameters) == []


# --------------------------------------------------------------------------- schema errors


def test_unsupported_object_is_an_error():
    with pytest.raises(ToolSchemaError, match=r"tool '#0': unsupported tool of type int"):
        to_tool_spec(42)
    with pytest.raises(ToolSchemaError, match=r"tool '#1': unsupported tool of type int"):
        to_tool_specs([WEATHER, 42])
    with pytest.raises(ToolSchemaError, match=r"unsupported tool: class Exception"):
        to_tool_spec(Exception)


def test_missing_name_uses_the_list_index():
    tools = [{**WEATHER, "name": f"t{i}"} for i in range(3)] + [{"description": "nameless", "parameters": {}}]
    with pytest.raises(ToolSchemaError, match=r"^tool '#3': name: missing tool name$"):
        to_tool_specs(tools)


def test_duplicate_names_are_rejected():
    with pytest.raises(ToolSchemaError, match=r"tool 'get_weather': name: duplicate tool name \(tools #0 and #2\)"):
        to_tool_specs([WEATHER, {"name": "other"}, WEATHER])


@pytest.mark.parametrize("name", ["get weather", "1tool", "a" * 129, "naïve", "<lambda>"])
def test_names_the_model_cannot_emit(name):
    with pytest.raises(ToolSchemaError, match=r"name: invalid tool name"):
        to_tool_spec({"name": name, "parameters": {}})


def test_long_but_legal_name_and_punctuation_are_fine():
    assert to_tool_spec({"name": "a" * 128}).name == "a" * 128
    assert to_tool_spec({"name": "ns:tool-v2.run"}).name == "ns:tool-v2.run"


@pytest.mark.parametrize("key", ["", "bad\nname", "tab\there"])
def test_invalid_property_names(key):
    message = schema_error({"type": "object", "properties": {key: {"type": "string"}}})
    assert message.startswith("tool 'bad_tool': parameters.properties: invalid property name")


def test_unknown_type_names_the_path():
    tool = {"name": "get_weather", "parameters": {"type": "object", "properties": {"unit": {"type": "colour"}}}}
    with pytest.raises(ToolSchemaError) as info:
        to_tool_spec(tool)
    assert str(info.value) == (
        "tool 'get_weather': parameters.properties.unit.type: unknown type 'colour' "
        "(expected one of object, array, string, integer, number, boolean, null)"
    )
    assert info.value.tool == "get_weather" and info.value.path == "parameters.properties.unit.type"


def test_unknown_type_in_anthropic_form_uses_its_key():
    with pytest.raises(
        ToolSchemaError, match=r"tool 'f': input_schema\.properties\.a\.items\.type: unknown type 'HashMap'"
    ):
        to_tool_spec(
            {"name": "f", "input_schema": {"properties": {"a": {"type": "array", "items": {"type": "HashMap"}}}}}
        )


def test_recursive_dict_schema():
    schema = {
        "type": "object",
        "properties": {"tree": {"$ref": "#/$defs/Node"}},
        "$defs": {
            "Node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}
        },
    }
    message = schema_error(schema)
    assert message.startswith("tool 'bad_tool': parameters.properties.tree.properties.kids.items: recursive schema")


def test_bad_references():
    assert "unresolvable reference '#/$defs/Missing'" in schema_error(
        {"properties": {"a": {"$ref": "#/$defs/Missing"}}}
    )
    message = schema_error({"properties": {"a": {"$ref": "https://example.com/s.json"}}})
    assert message.startswith("tool 'bad_tool': parameters.properties.a.$ref: unsupported reference")


def test_required_key_that_is_not_a_property():
    message = schema_error({"type": "object", "properties": {"a": {}}, "required": ["a", "b"]})
    assert message == "tool 'bad_tool': parameters.required: required key 'b' is not a property"


@pytest.mark.parametrize("enum", [[], "a,b", None])
def test_enum_must_be_a_non_empty_list(enum):
    message = schema_error({"properties": {"u": {"type": "string", "enum": enum}}})
    assert message.startswith("tool 'bad_tool': parameters.properties.u.enum: enum must be a non-empty list")


def test_minimum_greater_than_maximum():
    message = schema_error({"properties": {"n": {"type": "integer", "minimum": 5, "maximum": 1}}})
    assert message == "tool 'bad_tool': parameters.properties.n.minimum: minimum (5) is greater than maximum (1)"
    message = schema_error({"properties": {"s": {"type": "string", "minLength": 5, "maxLength": 1}}})
    assert "parameters.properties.s.minLength: minLength (5) is greater than maxLength (1)" in message


def test_invalid_pattern():
    message = schema_error({"properties": {"code": {"type": "string", "pattern": "[A-Z"}}})
    assert message.startswith("tool 'bad_tool': parameters.properties.code.pattern: invalid regular expression '[A-Z'")


def test_unsupported_assertion_keyword_is_not_dropped_silently():
    message = schema_error({"properties": {"a": {"type": "string", "not": {"const": "x"}}}})
    assert (
        message == "tool 'bad_tool': parameters.properties.a.not: unsupported keyword 'not': Needle cannot enforce it"
    )


def test_allof_conflicts():
    message = schema_error({"properties": {"a": {"allOf": [{"type": "string"}, {"type": "integer"}]}}})
    assert message.startswith(
        "tool 'bad_tool': parameters.properties.a.allOf[1].type: allOf parts have no type in common"
    )
    message = schema_error({"properties": {"a": {"allOf": [{"format": "date"}, {"format": "email"}]}}})
    assert "parameters.properties.a.allOf[1].format: allOf parts disagree on 'format'" in message


def test_parameters_must_be_an_object():
    message = schema_error({"type": "string"})
    assert message.startswith("tool 'bad_tool': parameters: parameters must describe an object")


def test_bad_inputs_to_the_list_and_string_forms():
    with pytest.raises(ToolSchemaError, match=r"expected a list of tools, got dict"):
        to_tool_specs(WEATHER)
    with pytest.raises(ToolSchemaError, match=r"string is not valid JSON"):
        to_tool_spec("{not json")
    with pytest.raises(ToolSchemaError, match=r"use to_tool_specs"):
        to_tool_spec(json.dumps([WEATHER]))


def test_nothing_half_converted_and_input_untouched():
    tool = {"name": "f", "parameters": {"properties": {"a": {"type": "string", "title": "A"}, "b": {"type": "nope"}}}}
    before = json.dumps(tool)
    with pytest.raises(ToolSchemaError):
        to_tool_spec(tool)
    assert json.dumps(tool) == before
    spec = to_tool_spec(WEATHER)
    spec.to_dict()["parameters"]["properties"].clear()
    assert spec.parameters == EXPECTED_WEATHER


# --------------------------------------------------------------------------- validate_call


@pytest.fixture
def specs() -> list[ToolSpec]:
    def plan_trip(
        city: str,
        days: int,
        budget: float = 100.0,
        flexible: bool = False,
        stops: list[int] = [],  # noqa: B006 - never called
        note: int | None = None,
        unit: Literal["c", "f"] = "c",
    ) -> None:
        """Plan a trip."""

    closed = {
        "name": "closed",
        "parameters": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False},
    }
    return to_tool_specs([WEATHER, plan_trip, closed])


def test_valid_call_passes_unchanged(specs):
    args = {"location": "Paris", "unit": "celsius"}
    assert validate_call("get_weather", args, specs) == args
    assert validate_call("get_weather", json.dumps(args), {s.name: s for s in specs}) == args


def test_safe_coercions(specs):
    args = {"city": "Rome", "days": "3", "budget": "2.5", "flexible": "true", "stops": ["1", 2.0], "note": "7"}
    coerced = validate_call("plan_trip", args, specs)
    assert coerced == {"city": "Rome", "days": 3, "budget": 2.5, "flexible": True, "stops": [1, 2], "note": 7}
    assert type(coerced["budget"]) is float and type(coerced["stops"][1]) is int
    assert args["days"] == "3"  # the caller's dict is not modified
    as_float = validate_call("plan_trip", {"city": "Rome", "days": 1, "budget": 20, "flexible": "False"}, specs)
    assert as_float["budget"] == 20.0 and type(as_float["budget"]) is float and as_float["flexible"] is False


def test_no_unsafe_coercion(specs):
    with pytest.raises(ToolCallError, match=r"call to 'plan_trip': arguments\.stops: 5 is not of type 'array'"):
        validate_call("plan_trip", {"city": "Rome", "days": 1, "stops": 5}, specs)
    with pytest.raises(ToolCallError, match=r"arguments\.days: 'three' is not of type 'integer'"):
        validate_call("plan_trip", {"city": "Rome", "days": "three"}, specs)
    with pytest.raises(ToolCallError, match=r"arguments\.days: '2\.5' is not of type 'integer'"):
        validate_call("plan_trip", {"city": "Rome", "days": "2.5"}, specs)


def test_missing_required_property_names_its_path(specs):
    with pytest.raises(ToolCallError) as info:
        validate_call("get_weather", {"unit": "celsius"}, specs)
    assert str(info.value) == "call to 'get_weather': arguments.location: required property missing"
    assert info.value.path == "arguments.location"


def test_enum_and_unexpected_property_errors(specs):
    with pytest.raises(ToolCallError, match=r"arguments\.unit: 'kelvin' is not one of"):
        validate_call("get_weather", {"location": "Oslo", "unit": "kelvin"}, specs)
    with pytest.raises(ToolCallError, match=r"^call to 'closed': arguments\.extra: unexpected property$"):
        validate_call("closed", {"a": "x", "extra": 1}, specs)


def test_unknown_tool_lists_declared_names(specs):
    with pytest.raises(ToolCallError) as info:
        validate_call("get_wether", {}, specs)
    assert (
        str(info.value) == "call to 'get_wether': unknown tool (declared tools: 'get_weather', 'plan_trip', 'closed')"
    )


def test_arguments_that_are_not_an_object(specs):
    with pytest.raises(ToolCallError, match=r"arguments: not valid JSON"):
        validate_call("get_weather", "{location: Paris", specs)
    with pytest.raises(ToolCallError, match=r"arguments: expected a JSON object, got list"):
        validate_call("get_weather", [1], specs)
    assert validate_call("closed", "", specs) == {}


def test_validate_value_helper():
    schema = to_tool_spec(WEATHER).parameters
    assert validate_value({"location": "Oslo"}, schema) == []
    assert validate_value({"location": 3}, schema) == ["value.location: 3 is not of type 'string'"]
    assert validate_value({}, schema) == ["value.location: required property missing"]


def test_conversions_are_remembered_per_tool_keeping_property_order():
    """Agents send the same tools on every call: a repeat conversion is the same spec, but a tool
    whose properties come in another order is another spec (the order is rendered)."""
    props = {"city": {"type": "string", "description": "City"}, "days": {"type": "integer", "description": "Days"}}
    tool = {"name": "forecast", "description": "Weather forecast.",
            "parameters": {"type": "object", "properties": props, "required": ["city"]}}
    reordered = json.loads(json.dumps(tool))
    reordered["parameters"]["properties"] = dict(reversed(list(props.items())))
    first = to_tool_spec(tool)
    assert to_tool_specs([tool])[0] is first
    assert list(to_tool_spec(reordered).parameters["properties"]) == ["days", "city"]
    assert list(to_tool_spec(tool).parameters["properties"]) == ["city", "days"]
    assert first.parameters["properties"] is not tool["parameters"]["properties"]  # later edits of the input stay out
    broken = {"name": "broken", "description": "", "parameters": {"type": "object", "properties": {"x": {"type": "nope"}}}}
    for i in range(2):  # failures are not remembered: each names the tool at its own index
        with pytest.raises(ToolSchemaError, match="broken"):
            to_tool_specs([tool] * i + [broken])
