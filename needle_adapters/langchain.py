"""LangChain chat model for Needle: `ChatNeedle`.

```python
from needle_adapters.langchain import ChatNeedle

llm = ChatNeedle().bind_tools([get_weather], tool_choice="auto")
llm.invoke("What's the weather in Paris?").tool_calls
# [{'name': 'get_weather', 'args': {'city': 'Paris'}, 'id': 'call_...', 'type': 'tool_call'}]
```

Needle decides which tool to call with which arguments; it writes no free text. A turn that
needs text (no tools bound, ``tool_choice="none"``, no call fits) or a decision below
``confidence_threshold`` goes to ``fallback`` when one is set, with the same tools bound; without
one, the reply states the tool results of the turn (so agent loops end with an answer) or says
plainly that Needle only makes tool decisions. ``response_metadata["answered_by"]`` tells which.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from needle_adapters._common import Decision, Turn, count_tokens, load_engine, resolve_tool_choice
from needle_core.types import ToolCall

_ROLES = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
}


def _arguments_json(call: ToolCall) -> str:
    """A call's arguments as JSON text, non-ASCII kept as is (tool_call_chunks and invalid calls carry text)."""
    return json.dumps(call.arguments, ensure_ascii=False)


def _names(tools: list[dict[str, Any]]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def _to_needle_message(message: BaseMessage) -> dict[str, Any]:
    """One LangChain message in Needle's dict form."""
    if isinstance(message, ToolMessage):
        return {
            "role": "tool",
            "content": message.text,
            "tool_call_id": message.tool_call_id,
            "name": message.name or "",
        }
    if isinstance(message, AIMessage):
        calls = [{"id": c["id"] or "", "name": c["name"], "arguments": c["args"]} for c in message.tool_calls]
        return {"role": "assistant", "content": message.text, "tool_calls": calls}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": message.text}
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.text}
    if isinstance(message, ChatMessage) and message.role in _ROLES:
        return {"role": _ROLES[message.role], "content": message.text}
    raise ValueError(
        f"ChatNeedle cannot read a {type(message).__name__} (role {getattr(message, 'role', message.type)!r})"
    )


class ChatNeedle(BaseChatModel):
    """Needle, the tiny local tool-calling model, as a LangChain chat model.

    Setup: ``pip install 'needle[langchain]'``. The bundled model is used unless ``model_dir``
    names another one.

    Key init args:
        model_dir: directory of a Needle model; None for the bundled one.
        needle: an engine to use instead of loading ``model_dir`` (anything with Needle's
            ``call``/``acall``/``model_name``).
        fallback: chat model that answers turns needing free text or a surer decision.
        confidence_threshold: decisions below it go to ``fallback`` (when set).
        tool_choice: default tool_choice when ``bind_tools`` gives none.

    Tool calling:
        ```python
        llm = ChatNeedle().bind_tools([get_weather, convert_currency], tool_choice="any")
        msg = llm.invoke("Convert 20 euros to dollars")
        msg.tool_calls, msg.response_metadata["confidence"]
        ```

    Structured output (a record copied out of a passage):
        ```python
        ChatNeedle().with_structured_output(Person).invoke("Alice Smith, 31, lives in Berlin.")
        ```

    Agents: ``langchain.agents.create_agent(ChatNeedle(), tools)`` runs the tool steps and ends
    with a reply that states the tool results; give ``fallback=`` for a written answer.
    """

    model_dir: str | None = None
    needle: Any = Field(default=None, exclude=True)
    fallback: BaseChatModel | None = None
    confidence_threshold: float = 0.5
    tool_choice: dict[str, Any] | str | bool | None = "auto"

    @property
    def _llm_type(self) -> str:
        return "needle"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "confidence_threshold": self.confidence_threshold}

    @property
    def _engine(self) -> Any:
        return self.needle if self.needle is not None else load_engine(self.model_dir)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "needle"
        params["ls_model_name"] = kwargs["model"] if isinstance(kwargs.get("model"), str) else self._engine.model_name
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (anything `convert_to_openai_tool` takes) and optionally a tool_choice.

        tool_choice: "auto"; "any", "required" or True to force a call; "none" or False for no
        call; a tool name (or OpenAI/Anthropic dict naming one) to force that tool.
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = resolve_tool_choice(tool_choice, _names(formatted))
        return super().bind(tools=formatted, **kwargs)

    # -- one turn -------------------------------------------------------------------------------

    def _turn(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> Turn:
        tools = kwargs.get("tools") or []
        return Turn.build(
            [_to_needle_message(m) for m in messages], tools, _names(tools), kwargs.get("tool_choice", self.tool_choice)
        )

    def _route(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> tuple[Turn, Decision]:
        turn = self._turn(messages, kwargs)
        return turn, turn.run(self._engine, self.confidence_threshold, self.fallback is not None)

    async def _aroute(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> tuple[Turn, Decision]:
        turn = self._turn(messages, kwargs)
        return turn, await turn.arun(self._engine, self.confidence_threshold, self.fallback is not None)

    def _fallback_model(self, turn: Turn) -> Runnable[LanguageModelInput, BaseMessage]:
        """The fallback with the turn's tools bound (as it is, when it cannot bind tools).

        It runs as a run of its own; its reply comes back as this model's, marked ``answered_by``.
        """
        assert self.fallback is not None
        if not turn.uses_engine:
            return self.fallback
        choice = {"auto": {}, "required": {"tool_choice": "any"}}.get(
            turn.tool_choice, {"tool_choice": turn.tool_choice}
        )
        try:
            return self.fallback.bind_tools(turn.tools, **choice)
        except NotImplementedError:
            return self.fallback

    def _usage(self, turn: Turn, decision: Decision) -> dict[str, int]:
        inputs, outputs = count_tokens(turn.messages), len(decision.calls)
        return {"input_tokens": inputs, "output_tokens": outputs, "total_tokens": inputs + outputs}

    def _reply(self, turn: Turn, decision: Decision) -> AIMessage:
        return AIMessage(
            content=decision.text,
            tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in decision.calls],
            invalid_tool_calls=[
                invalid_tool_call(name=c.name, args=_arguments_json(c), id=c.id, error=e) for c, e in decision.invalid
            ],
            usage_metadata=self._usage(turn, decision),
            response_metadata=decision.metadata(self._engine.model_name),
        )

    def _reply_chunks(self, turn: Turn, decision: Decision) -> list[AIMessageChunk]:
        """The reply as chunks: the text or one chunk per call; the last carries usage and metadata.

        LangChain rebuilds tool_calls from tool_call_chunks when chunks are added, so an invalid
        call (to a tool that is not bound) cannot stay invalid in a stream: it is left out and
        named in ``response_metadata["warnings"]`` instead.
        """
        parts: list[dict[str, Any]] = [{"content": decision.text}] if decision.text else []
        parts += [
            {
                "content": "",
                "tool_call_chunks": [tool_call_chunk(name=c.name, args=_arguments_json(c), id=c.id, index=i)],
            }
            for i, c in enumerate(decision.calls)
        ]
        metadata = decision.metadata(self._engine.model_name, invalid_as_warnings=True)
        parts[-1].update(usage_metadata=self._usage(turn, decision), response_metadata=metadata, chunk_position="last")
        return [AIMessageChunk(**part) for part in parts]

    @staticmethod
    def _mark_fallback(message: BaseMessage, decision: Decision) -> BaseMessage:
        """The fallback's reply (or first chunk) with ``answered_by`` and Needle's confidence added."""
        if decision.answered_by != "fallback":
            return message
        extra: dict[str, Any] = {"answered_by": "fallback"}
        if decision.result is not None:
            extra["confidence"] = decision.result.confidence
        return message.model_copy(update={"response_metadata": {**message.response_metadata, **extra}})

    # -- LangChain entry points -----------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turn, decision = self._route(messages, kwargs)
        if decision.answered_by == "fallback":
            answer = self._fallback_model(turn).invoke(messages)
            return ChatResult(generations=[ChatGeneration(message=self._mark_fallback(answer, decision))])
        return ChatResult(generations=[ChatGeneration(message=self._reply(turn, decision))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turn, decision = await self._aroute(messages, kwargs)
        if decision.answered_by == "fallback":
            answer = await self._fallback_model(turn).ainvoke(messages)
            return ChatResult(generations=[ChatGeneration(message=self._mark_fallback(answer, decision))])
        return ChatResult(generations=[ChatGeneration(message=self._reply(turn, decision))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        turn, decision = self._route(messages, kwargs)
        if decision.answered_by == "fallback":
            chunks: Iterator[BaseMessage] = self._fallback_model(turn).stream(messages)
        else:
            chunks = iter(self._reply_chunks(turn, decision))
        for i, chunk in enumerate(chunks):
            generation = ChatGenerationChunk(message=self._mark_fallback(chunk, decision) if i == 0 else chunk)
            if run_manager:
                run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        turn, decision = await self._aroute(messages, kwargs)
        if decision.answered_by == "fallback":
            chunks: AsyncIterator[BaseMessage] = self._fallback_model(turn).astream(messages)
        else:
            chunks = _aiter(self._reply_chunks(turn, decision))
        i = 0
        async for chunk in chunks:
            generation = ChatGenerationChunk(message=self._mark_fallback(chunk, decision) if i == 0 else chunk)
            i += 1
            if run_manager:
                await run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation


async def _aiter(items: list[AIMessageChunk]) -> AsyncIterator[AIMessageChunk]:
    for item in items:
        yield item
