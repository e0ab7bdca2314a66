"""NeedleLLM (needle_adapters.llama_index) on the deterministic fake engine."""

from __future__ import annotations

import pytest
from fake_needle import FakeNeedle
from llama_index.core.agent.workflow import AgentStream, FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.llms import MockLLM
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from needle_adapters import _common
from needle_adapters.llama_index import NeedleLLM


def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"sunny in {city}"


def convert_temperature(celsius: int) -> str:
    """Convert a temperature in celsius to fahrenheit."""
    return f"{celsius * 9 / 5 + 32:.1f} F"


TOOLS = [FunctionTool.from_defaults(get_weather), FunctionTool.from_defaults(convert_temperature)]
WEATHER = "What is the weather in Paris?"
TWO_STEPS = "What is the weather in Paris? Then convert 21 celsius to fahrenheit."


@pytest.fixture
def engine() -> FakeNeedle:
    return FakeNeedle()


@pytest.fixture
def llm(engine: FakeNeedle) -> NeedleLLM:
    return NeedleLLM(needle=engine)


def test_metadata(llm: NeedleLLM) -> None:
    meta = llm.metadata
    assert meta.is_function_calling_model and meta.is_chat_model
    assert meta.model_name == "needle-fake" and meta.context_window == 512


def test_chat_with_tools_returns_tool_call_blocks(llm: NeedleLLM, engine: FakeNeedle) -> None:
    response = llm.chat_with_tools(TOOLS, user_msg=WEATHER)
    blocks = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert [(b.tool_name, b.tool_kwargs) for b in blocks] == [("get_weather", {"city": "Paris"})]
    selections = llm.get_tool_calls_from_response(response)
    assert [(s.tool_id, s.tool_name, s.tool_kwargs) for s in selections] == [
        (blocks[0].tool_call_id, "get_weather", {"city": "Paris"})
    ]
    assert selections[0].tool_id.startswith("call_")
    assert engine.requests[-1]["tool_choice"] == "auto"
    meta = response.additional_kwargs
    assert meta["answered_by"] == "needle" and meta["model_name"] == "needle-fake" and meta["confidence"] == 0.9
    assert (meta["prompt_tokens"], meta["completion_tokens"], meta["total_tokens"]) == (6, 1, 7)


def test_no_tool_call(llm: NeedleLLM) -> None:
    response = llm.chat_with_tools(TOOLS, user_msg="Hello there")
    assert response.message.content == _common.NO_CALL_TEXT
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="at least one tool call"):
        llm.get_tool_calls_from_response(response)


def test_tool_required_forces_a_call(llm: NeedleLLM, engine: FakeNeedle) -> None:
    response = llm.chat_with_tools(TOOLS, user_msg="Hello there", tool_required=True)
    assert len(llm.get_tool_calls_from_response(response)) == 1
    assert engine.requests[-1]["tool_choice"] == "required"


def test_tool_choice_names_a_tool(llm: NeedleLLM, engine: FakeNeedle) -> None:
    query = "What is the weather in Paris? It is 20 degrees."
    response = llm.chat_with_tools(TOOLS, user_msg=query, tool_choice="convert_temperature")
    selections = llm.get_tool_calls_from_response(response)
    assert [(s.tool_name, s.tool_kwargs) for s in selections] == [("convert_temperature", {"celsius": 20})]
    assert engine.requests[-1]["tool_choice"] == "convert_temperature"


def test_parallel_calls_only_when_allowed() -> None:
    llm = NeedleLLM(needle=FakeNeedle(parallel=True))
    query = "Get the weather in Paris and convert 21 celsius"
    single = llm.get_tool_calls_from_response(llm.chat_with_tools(TOOLS, user_msg=query))
    both = llm.get_tool_calls_from_response(llm.chat_with_tools(TOOLS, user_msg=query, allow_parallel_tool_calls=True))
    assert len(single) == 1 and single[0].tool_name == both[0].tool_name
    assert sorted(s.tool_name for s in both) == ["convert_temperature", "get_weather"]


def test_history_with_tool_results_is_stated(llm: NeedleLLM, engine: FakeNeedle) -> None:
    history = [
        ChatMessage(role=MessageRole.USER, content=WEATHER),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            blocks=[ToolCallBlock(tool_call_id="c1", tool_name="get_weather", tool_kwargs='{"city": "Paris"}')],
        ),
        ChatMessage(role=MessageRole.TOOL, content="sunny in Paris", additional_kwargs={"tool_call_id": "c1"}),
    ]
    response = llm.chat_with_tools([TOOLS[0]], chat_history=history)
    assert response.message.content == "get_weather returned: sunny in Paris"
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    sent = engine.requests[-1]["messages"]
    assert sent[1]["tool_calls"] == [{"id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}]


async def test_async_and_streaming_variants(llm: NeedleLLM) -> None:
    response = await llm.achat_with_tools(TOOLS, user_msg=WEATHER)
    assert llm.get_tool_calls_from_response(response)[0].tool_kwargs == {"city": "Paris"}
    last = list(llm.stream_chat_with_tools(TOOLS, user_msg=WEATHER))[-1]
    assert llm.get_tool_calls_from_response(last)[0].tool_name == "get_weather"
    last = [r async for r in await llm.astream_chat_with_tools(TOOLS, user_msg=WEATHER)][-1]
    assert llm.get_tool_calls_from_response(last)[0].tool_name == "get_weather"


def test_complete_family_without_tools(llm: NeedleLLM) -> None:
    assert llm.complete("Hello").text == _common.NO_TOOLS_TEXT
    assert "".join(r.delta for r in llm.stream_complete("Hello")) == _common.NO_TOOLS_TEXT


async def test_async_complete_family(llm: NeedleLLM) -> None:
    assert (await llm.acomplete("Hello")).text == _common.NO_TOOLS_TEXT
    assert [r.delta async for r in await llm.astream_complete("Hello")] == [_common.NO_TOOLS_TEXT]


class Person(BaseModel):
    """A person mentioned in a text."""

    name: str
    age: int
    city: str


def test_structured_predict_extracts_a_record(llm: NeedleLLM) -> None:
    person = llm.structured_predict(
        Person, PromptTemplate("{text}"), text="Alice Smith is 31 years old and lives in Berlin."
    )
    assert person == Person(name="Alice Smith", age=31, city="Berlin")


# -- agents -------------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
async def test_function_agent_finishes_a_two_step_task(engine: FakeNeedle, streaming: bool) -> None:
    agent = FunctionAgent(llm=NeedleLLM(needle=engine), tools=TOOLS, streaming=streaming)
    handler = agent.run(user_msg=TWO_STEPS)
    results, streamed = [], 0
    async for event in handler.stream_events():
        if isinstance(event, ToolCallResult):
            results.append((event.tool_name, event.tool_kwargs, event.tool_output.content))
        streamed += isinstance(event, AgentStream)
    response = await handler
    assert sorted(results) == [
        ("convert_temperature", {"celsius": 21}, "69.8 F"),
        ("get_weather", {"city": "Paris"}, "sunny in Paris"),
    ]
    assert str(response) == "convert_temperature returned: 69.8 F\nget_weather returned: sunny in Paris"
    assert len(engine.requests) == 3
    assert (streamed > 0) == streaming


# -- fallback routing ---------------------------------------------------------------------------


def test_fallback_answers_without_tools(engine: FakeNeedle) -> None:
    llm = NeedleLLM(needle=engine, fallback=MockLLM())
    response = llm.chat([ChatMessage(role=MessageRole.USER, content="Tell me a story")])
    assert "Tell me a story" in response.message.content  # MockLLM echoes its prompt
    assert response.additional_kwargs["answered_by"] == "fallback" and engine.requests == []
    assert "Tell me a story" in llm.complete("Tell me a story").text


def test_low_confidence_goes_to_a_function_calling_fallback_with_the_tools() -> None:
    llm = NeedleLLM(needle=FakeNeedle(confidence=0.2), fallback=MockFunctionCallingLLM())
    response = llm.chat_with_tools(TOOLS, user_msg=WEATHER)
    assert response.additional_kwargs["answered_by"] == "fallback" and response.additional_kwargs["confidence"] == 0.2
    # MockFunctionCallingLLM calls every tool it is given, with ids of its own.
    selections = llm.get_tool_calls_from_response(response)
    assert {s.tool_name for s in selections} == {"get_weather", "convert_temperature"}
    assert all(s.tool_id.startswith("mock-tool-call-") for s in selections)


def test_low_confidence_without_fallback_still_answers() -> None:
    llm = NeedleLLM(needle=FakeNeedle(confidence=0.2))
    response = llm.chat_with_tools(TOOLS, user_msg=WEATHER)
    assert response.additional_kwargs["answered_by"] == "needle" and llm.get_tool_calls_from_response(response)


def test_no_call_goes_to_a_plain_fallback_without_tools(engine: FakeNeedle) -> None:
    llm = NeedleLLM(needle=engine, fallback=MockLLM())
    response = llm.chat_with_tools(TOOLS, user_msg="Hello there")
    assert "Hello there" in response.message.content and response.additional_kwargs["answered_by"] == "fallback"
    assert engine.requests[-1]["tool_choice"] == "auto"


async def test_fallback_streams_and_async(engine: FakeNeedle) -> None:
    llm = NeedleLLM(needle=engine, fallback=MockLLM())
    messages = [ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="Hi")])]
    streamed = list(llm.stream_chat(messages))
    assert streamed and all(r.additional_kwargs["answered_by"] == "fallback" for r in streamed)
    assert (await llm.achat(messages)).additional_kwargs["answered_by"] == "fallback"
    streamed = [r async for r in await llm.astream_chat(messages)]
    assert streamed and all(r.additional_kwargs["answered_by"] == "fallback" for r in streamed)
