"""ChatNeedle (needle_adapters.langchain) on the deterministic fake engine."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fake_needle import FakeNeedle
from langchain_core.language_models import FakeMessagesListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from needle_adapters import _common
from needle_adapters.langchain import ChatNeedle
from needle_core.types import NeedleResult, ToolCall


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"sunny in {city}"


@tool
def convert_temperature(celsius: int) -> str:
    """Convert a temperature in celsius to fahrenheit."""
    return f"{celsius * 9 / 5 + 32:.1f} F"


TOOLS = [get_weather, convert_temperature]
WEATHER = "What is the weather in Paris?"


@pytest.fixture
def engine() -> FakeNeedle:
    return FakeNeedle()


@pytest.fixture
def llm(engine: FakeNeedle) -> ChatNeedle:
    return ChatNeedle(needle=engine)


class StubEngine(FakeNeedle):
    """Answers every request with the given calls."""

    def __init__(self, *calls: ToolCall, confidence: float = 0.9):
        super().__init__(confidence=confidence)
        self.fixed = list(calls)

    def call(self, query_or_messages: Any, tools: list[dict[str, Any]], tool_choice: str = "auto") -> NeedleResult:
        super().call(query_or_messages, tools, tool_choice)
        return NeedleResult(calls=self.fixed, confidence=self.confidence, warnings=["cut 3 tokens"])


class RecordingFallback(FakeMessagesListChatModel):
    """A fallback that can bind tools and records what it was bound with."""

    bound: list[dict[str, Any]] = Field(default_factory=list)

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
        self.bound.append({"tools": [t["function"]["name"] for t in tools], "tool_choice": tool_choice})
        return self.bind(tools=tools, tool_choice=tool_choice, **kwargs)


def merge(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


# -- tool calls and tool_choice ----------------------------------------------------------------


def test_auto_picks_the_matching_tool_with_ids_and_parsed_args(llm: ChatNeedle, engine: FakeNeedle) -> None:
    msg = llm.bind_tools(TOOLS).invoke(WEATHER)
    assert [(c["name"], c["args"], c["type"]) for c in msg.tool_calls] == [
        ("get_weather", {"city": "Paris"}, "tool_call")
    ]
    assert msg.tool_calls[0]["id"].startswith("call_")
    assert msg.invalid_tool_calls == [] and msg.content == ""
    assert engine.requests[-1]["tool_choice"] == "auto"
    assert engine.requests[-1]["tools"] == ["get_weather", "convert_temperature"]


def test_auto_calls_nothing_when_no_tool_fits(llm: ChatNeedle) -> None:
    msg = llm.bind_tools(TOOLS).invoke("Hello there")
    assert msg.tool_calls == [] and msg.content == _common.NO_CALL_TEXT


@pytest.mark.parametrize("choice", ["any", "required", True, {"type": "any"}])
def test_forcing_choices_make_a_call(llm: ChatNeedle, engine: FakeNeedle, choice: Any) -> None:
    msg = llm.bind_tools(TOOLS, tool_choice=choice).invoke("Hello there")
    assert len(msg.tool_calls) == 1
    assert engine.requests[-1]["tool_choice"] == "required"


@pytest.mark.parametrize(
    "choice",
    [
        "convert_temperature",
        {"type": "function", "function": {"name": "convert_temperature"}},
        {"type": "tool", "name": "convert_temperature"},
    ],
)
def test_a_named_tool_is_called(llm: ChatNeedle, engine: FakeNeedle, choice: Any) -> None:
    msg = llm.bind_tools(TOOLS, tool_choice=choice).invoke("What is the weather in Paris? It is 20 degrees.")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("convert_temperature", {"celsius": 20})]
    assert engine.requests[-1]["tool_choice"] == "convert_temperature"


def test_a_forced_call_that_cannot_be_formed_is_explained(llm: ChatNeedle) -> None:
    msg = llm.bind_tools(TOOLS, tool_choice="convert_temperature").invoke(WEATHER)  # no number to copy
    assert msg.tool_calls == [] and msg.content == _common.NO_CALL_TEXT
    assert msg.response_metadata["warnings"] == ["tool_choice requires a call, but none can be formed"]


@pytest.mark.parametrize("choice", ["none", False])
def test_none_skips_the_engine_and_says_so(llm: ChatNeedle, engine: FakeNeedle, choice: Any) -> None:
    msg = llm.bind_tools(TOOLS, tool_choice=choice).invoke(WEATHER)
    assert msg.tool_calls == [] and msg.content == _common.NO_TOOLS_TEXT
    assert engine.requests == []


def test_unknown_tool_name_is_refused_at_bind_time(llm: ChatNeedle) -> None:
    with pytest.raises(ValueError, match="names no bound tool"):
        llm.bind_tools(TOOLS, tool_choice="send_email")


def test_default_tool_choice_field_applies_when_bind_gives_none(engine: FakeNeedle) -> None:
    msg = ChatNeedle(needle=engine, tool_choice="any").bind_tools(TOOLS).invoke("Hello there")
    assert len(msg.tool_calls) == 1 and engine.requests[-1]["tool_choice"] == "required"


def test_bind_tools_accepts_functions_pydantic_and_dicts(llm: ChatNeedle, engine: FakeNeedle) -> None:
    def add_numbers(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    class SendEmail(BaseModel):
        """Send an email to someone."""

        to: str

    schema = {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up a word.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    msg = llm.bind_tools([add_numbers, SendEmail, schema]).invoke("Please add numbers 2 and 40")
    assert engine.requests[-1]["tools"] == ["add_numbers", "SendEmail", "lookup"]
    assert msg.tool_calls[0]["name"] == "add_numbers" and msg.tool_calls[0]["args"] == {"a": 2, "b": 40}


def test_history_messages_reach_the_engine_in_needle_form(llm: ChatNeedle, engine: FakeNeedle) -> None:
    history = [
        SystemMessage("Be brief."),
        HumanMessage("Weather in Rome?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Rome"}, "id": "c1"}]),
        ToolMessage("sunny in Rome", tool_call_id="c1"),
        HumanMessage(WEATHER),
    ]
    llm.bind_tools(TOOLS).invoke(history)
    sent = engine.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "user"]
    assert sent[2]["tool_calls"] == [{"id": "c1", "name": "get_weather", "arguments": {"city": "Rome"}}]
    assert sent[3]["tool_call_id"] == "c1"


def test_calls_to_unbound_tools_become_invalid_tool_calls() -> None:
    stub = StubEngine(
        ToolCall(name="get_weather", arguments={"city": "Oslo"}), ToolCall(name="send_email", arguments={"to": "bo"})
    )
    msg = ChatNeedle(needle=stub).bind_tools(TOOLS).invoke(WEATHER)
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert [(c["name"], json.loads(c["args"])) for c in msg.invalid_tool_calls] == [("send_email", {"to": "bo"})]
    assert "unknown tool 'send_email'" in msg.invalid_tool_calls[0]["error"]
    assert msg.response_metadata["warnings"] == ["cut 3 tokens"]


def test_only_invalid_calls_are_explained_in_the_text() -> None:
    msg = ChatNeedle(needle=StubEngine(ToolCall(name="send_email", arguments={}))).bind_tools(TOOLS).invoke(WEATHER)
    assert msg.tool_calls == [] and len(msg.invalid_tool_calls) == 1
    assert msg.content.startswith("Needle could not make a valid tool call: unknown tool 'send_email'")


def test_stream_names_invalid_calls_in_warnings() -> None:
    stub = StubEngine(
        ToolCall(name="get_weather", arguments={"city": "Oslo"}), ToolCall(name="send_email", arguments={})
    )
    full = merge(list(ChatNeedle(needle=stub).bind_tools(TOOLS).stream(WEATHER)))
    assert [c["name"] for c in full.tool_calls] == ["get_weather"]
    assert full.response_metadata["warnings"][0] == "cut 3 tokens"
    assert "send_email" in full.response_metadata["warnings"][1]


def test_usage_and_response_metadata(llm: ChatNeedle) -> None:
    msg = llm.bind_tools(TOOLS).invoke(WEATHER)
    assert msg.usage_metadata == {"input_tokens": 6, "output_tokens": 1, "total_tokens": 7}
    meta = msg.response_metadata
    assert meta["model_name"] == "needle-fake" and meta["answered_by"] == "needle"
    assert meta["confidence"] == 0.9 and "total_ms" in meta["timings"]


def test_without_tools_or_fallback_it_says_what_needle_does(llm: ChatNeedle, engine: FakeNeedle) -> None:
    msg = llm.invoke("Tell me a story")
    assert msg.content == _common.NO_TOOLS_TEXT and msg.tool_calls == []
    assert msg.response_metadata["answered_by"] == "needle" and engine.requests == []


# -- streaming, async, batch --------------------------------------------------------------------


def test_stream_yields_tool_call_chunks_and_one_usage(llm: ChatNeedle) -> None:
    chunks = list(llm.bind_tools(TOOLS).stream("Create a customer named '你好啊集团' and get the weather"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert chunks[-1].chunk_position == "last"
    assert sum(c.usage_metadata is not None for c in chunks) == 1
    assert "你好啊集团" in chunks[0].tool_call_chunks[0]["args"]
    full = merge(chunks)
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("get_weather", {"city": "你好啊集团"})]
    assert full.response_metadata["answered_by"] == "needle"


def test_stream_of_a_text_reply(llm: ChatNeedle) -> None:
    chunks = list(llm.stream("Hello"))
    assert len(chunks) == 1 and chunks[0].chunk_position == "last"
    assert chunks[0].content == _common.NO_TOOLS_TEXT and chunks[0].usage_metadata["input_tokens"] == 1


async def test_ainvoke_and_astream(llm: ChatNeedle) -> None:
    bound = llm.bind_tools(TOOLS)
    msg = await bound.ainvoke(WEATHER)
    assert msg.tool_calls[0]["args"] == {"city": "Paris"}
    chunks = [c async for c in bound.astream(WEATHER)]
    assert chunks[-1].chunk_position == "last"
    assert merge(chunks).tool_calls[0]["args"] == {"city": "Paris"}


def test_batch_and_abatch(llm: ChatNeedle) -> None:
    bound = llm.bind_tools(TOOLS)
    out = bound.batch([WEATHER, "Convert 30 celsius to fahrenheit"])
    assert [m.tool_calls[0]["name"] for m in out] == ["get_weather", "convert_temperature"]
    assert out[1].tool_calls[0]["args"] == {"celsius": 30}


async def test_abatch(llm: ChatNeedle) -> None:
    out = await llm.bind_tools(TOOLS).abatch([WEATHER, "Convert 30 celsius to fahrenheit"])
    assert [m.tool_calls[0]["name"] for m in out] == ["get_weather", "convert_temperature"]


# -- structured output ----------------------------------------------------------------------------

PASSAGE = "Alice Smith is 31 years old and lives in Berlin."


class Person(BaseModel):
    """A person mentioned in a text."""

    name: str = Field(description="full name")
    age: int
    city: str


class PersonDict(TypedDict):
    """A person mentioned in a text."""

    name: str
    age: int
    city: str


EXPECTED = {"name": "Alice Smith", "age": 31, "city": "Berlin"}


def test_structured_output_pydantic_extracts_a_record(llm: ChatNeedle, engine: FakeNeedle) -> None:
    assert llm.with_structured_output(Person).invoke(PASSAGE) == Person(**EXPECTED)
    assert engine.requests[-1]["tool_choice"] == "required"


@pytest.mark.parametrize("schema", [PersonDict, Person.model_json_schema()])
def test_structured_output_typeddict_and_json_schema(llm: ChatNeedle, schema: Any) -> None:
    assert llm.with_structured_output(schema).invoke(PASSAGE) == EXPECTED


def test_structured_output_include_raw_and_stream(llm: ChatNeedle) -> None:
    out = llm.with_structured_output(Person, include_raw=True).invoke(PASSAGE)
    assert out["parsed"] == Person(**EXPECTED) and out["parsing_error"] is None
    assert list(llm.with_structured_output(Person).stream(PASSAGE))[-1] == Person(**EXPECTED)


# -- multi-step: agents and tool-result summaries --------------------------------------------------


def test_reply_states_tool_results_after_the_last_user_message(llm: ChatNeedle) -> None:
    history = [
        HumanMessage("Weather in Rome?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Rome"}, "id": "old"}]),
        ToolMessage("sunny in Rome", tool_call_id="old", name="get_weather"),
        HumanMessage(WEATHER),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
        ToolMessage('{"sky": "clear"}', tool_call_id="c1"),  # no name: taken from the call with this id
    ]
    msg = llm.bind_tools([get_weather]).invoke(history)
    assert msg.tool_calls == []
    assert msg.content == 'get_weather returned: {"sky": "clear"}'


def test_create_agent_finishes_a_two_step_task(llm: ChatNeedle, engine: FakeNeedle) -> None:
    from langchain.agents import create_agent

    agent = create_agent(llm, TOOLS)
    state = agent.invoke(
        {"messages": [HumanMessage("What is the weather in Paris? Then convert 21 celsius to fahrenheit.")]}
    )
    tool_messages = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    assert sorted(m.name for m in tool_messages) == ["convert_temperature", "get_weather"]
    final = state["messages"][-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert "get_weather returned: sunny in Paris" in final.content
    assert "convert_temperature returned: 69.8 F" in final.content
    assert len(engine.requests) == 3


# -- fallback routing ---------------------------------------------------------------------------


def test_fallback_answers_without_tools(engine: FakeNeedle) -> None:
    fallback = GenericFakeChatModel(messages=iter(["Once upon a time"]))
    msg = ChatNeedle(needle=engine, fallback=fallback).invoke("Tell me a story")
    assert msg.content == "Once upon a time"
    assert msg.response_metadata["answered_by"] == "fallback" and "confidence" not in msg.response_metadata
    assert engine.requests == []


def test_fallback_answers_low_confidence_with_the_same_tools() -> None:
    answer = AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "fb1"}])
    fallback = RecordingFallback(responses=[answer])
    msg = (
        ChatNeedle(needle=FakeNeedle(confidence=0.2), fallback=fallback)
        .bind_tools(TOOLS, tool_choice="any")
        .invoke(WEATHER)
    )
    assert msg.tool_calls[0]["id"] == "fb1"
    assert msg.response_metadata["answered_by"] == "fallback" and msg.response_metadata["confidence"] == 0.2
    assert fallback.bound == [{"tools": ["get_weather", "convert_temperature"], "tool_choice": "any"}]


def test_low_confidence_without_fallback_still_answers(engine: FakeNeedle) -> None:
    msg = ChatNeedle(needle=FakeNeedle(confidence=0.2)).bind_tools(TOOLS).invoke(WEATHER)
    assert msg.tool_calls and msg.response_metadata["answered_by"] == "needle"


def test_threshold_is_configurable() -> None:
    fallback = FakeMessagesListChatModel(responses=[AIMessage("fallback")])
    llm = ChatNeedle(needle=FakeNeedle(confidence=0.2), fallback=fallback, confidence_threshold=0.1)
    assert llm.bind_tools(TOOLS).invoke(WEATHER).response_metadata["answered_by"] == "needle"


@pytest.mark.parametrize(("query", "choice"), [("Hello there", "auto"), (WEATHER, "none")])
def test_free_text_turns_go_to_the_fallback(engine: FakeNeedle, query: str, choice: str) -> None:
    fallback = FakeMessagesListChatModel(responses=[AIMessage("Hi! How can I help?")])
    msg = ChatNeedle(needle=engine, fallback=fallback).bind_tools(TOOLS, tool_choice=choice).invoke(query)
    assert msg.content == "Hi! How can I help?" and msg.response_metadata["answered_by"] == "fallback"


def test_tool_results_are_stated_by_needle_even_with_a_fallback(engine: FakeNeedle) -> None:
    fallback = FakeMessagesListChatModel(responses=[AIMessage("fallback")])
    history = [
        HumanMessage(WEATHER),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
        ToolMessage("sunny", tool_call_id="c1", name="get_weather"),
    ]
    msg = ChatNeedle(needle=engine, fallback=fallback).bind_tools([get_weather]).invoke(history)
    assert msg.content == "get_weather returned: sunny" and msg.response_metadata["answered_by"] == "needle"


def test_fallback_stream_marks_answered_by_once(engine: FakeNeedle) -> None:
    fallback = GenericFakeChatModel(messages=iter(["one two three"]))
    chunks = list(ChatNeedle(needle=engine, fallback=fallback).stream("Tell me a story"))
    assert len(chunks) > 1
    full = merge(chunks)
    assert full.content == "one two three" and full.response_metadata["answered_by"] == "fallback"


async def test_fallback_async(engine: FakeNeedle) -> None:
    llm = ChatNeedle(needle=engine, fallback=GenericFakeChatModel(messages=iter(["hi", "a b"])))
    msg = await llm.ainvoke("Hello")
    assert msg.content == "hi" and msg.response_metadata["answered_by"] == "fallback"
    full = merge([c async for c in llm.astream("Hello")])
    assert full.content == "a b" and full.response_metadata["answered_by"] == "fallback"


# -- engine loading -----------------------------------------------------------------------------


def test_engine_is_loaded_lazily_once_per_model_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    import needle_core

    monkeypatch.setattr(needle_core, "Needle", FakeNeedle, raising=False)
    _common._load.cache_clear()
    try:
        a, b = ChatNeedle(model_dir="/models/x"), ChatNeedle(model_dir="/models/x")
        assert a.bind_tools(TOOLS).invoke(WEATHER).tool_calls
        assert a._engine is b._engine and a._engine.model_dir == "/models/x"
        assert ChatNeedle()._engine is not a._engine
    finally:
        _common._load.cache_clear()


def test_ls_params_name_the_provider_and_model(llm: ChatNeedle) -> None:
    params = llm._get_ls_params()
    assert params["ls_provider"] == "needle" and params["ls_model_name"] == "needle-fake"
