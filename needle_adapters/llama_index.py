"""LlamaIndex LLM for Needle: `NeedleLLM`, a `FunctionCallingLLM`.

```python
from llama_index.core.agent.workflow import FunctionAgent
from needle_adapters.llama_index import NeedleLLM

agent = FunctionAgent(llm=NeedleLLM(), tools=[get_weather])
await agent.run("What's the weather in Paris?")
```

Needle decides which tool to call with which arguments; it writes no free text. A turn that
needs text (no tools, no call fits) or a decision below ``confidence_threshold`` goes to
``fallback`` when one is set, with the same tools; without one, the reply states the tool results
of the turn (so agents end with an answer) or says plainly that Needle only makes tool decisions.
``response.additional_kwargs["answered_by"]`` tells which.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.generic_utils import (
    achat_to_completion_decorator,
    astream_chat_to_completion_decorator,
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection
from llama_index.core.llms.utils import parse_partial_json

from needle_adapters._common import Decision, Turn, count_tokens, load_engine

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

CONTEXT_WINDOW = 512
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "chatbot": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
}


def _to_needle_message(message: ChatMessage) -> dict[str, Any]:
    """One LlamaIndex message in Needle's dict form (tool calls from its `ToolCallBlock`s)."""
    role = _ROLES.get(message.role.value)
    if role is None:
        raise ValueError(f"NeedleLLM cannot read a message with role {message.role.value!r}")
    out: dict[str, Any] = {"role": role, "content": message.content or ""}
    if role == "assistant":
        out["tool_calls"] = [
            {"id": b.tool_call_id or "", "name": b.tool_name, "arguments": b.tool_kwargs}
            for b in message.blocks
            if isinstance(b, ToolCallBlock)
        ]
    elif role == "tool":
        out["tool_call_id"] = message.additional_kwargs.get("tool_call_id", "")
        out["name"] = message.additional_kwargs.get("name", "")
    return out


class NeedleLLM(FunctionCallingLLM):
    """Needle, the tiny local tool-calling model, as a LlamaIndex function-calling LLM.

    Args:
        model_dir: directory of a Needle model; None for the bundled one.
        needle: an engine to use instead of loading ``model_dir`` (anything with Needle's
            ``call``/``acall``/``model_name``).
        fallback: LLM that answers turns needing free text or a surer decision.
        confidence_threshold: decisions below it go to ``fallback`` (when set).
    """

    model_dir: str | None = Field(default=None, description="Needle model directory; None for the bundled model.")
    needle: Any = Field(default=None, exclude=True, description="An engine to use instead of loading model_dir.")
    fallback: LLM | None = Field(default=None, description="LLM for turns that need free text or a surer decision.")
    confidence_threshold: float = Field(default=0.5, description="Decisions below it go to the fallback.")

    @classmethod
    def class_name(cls) -> str:
        return "NeedleLLM"

    @property
    def _engine(self) -> Any:
        return self.needle if self.needle is not None else load_engine(self.model_dir)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=CONTEXT_WINDOW,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self._engine.model_name,
        )

    # -- tools ----------------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Messages plus the tools and tool_choice that `chat` hands to Needle (or the fallback).

        ``tool_choice`` (a tool name, "auto", "required", "none" or an OpenAI-style dict) may come
        in kwargs; otherwise ``tool_required`` picks "required" over "auto".
        """
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str) else user_msg
            )
        tool_choice = kwargs.pop("tool_choice", None) or ("required" if tool_required else "auto")
        return {
            "messages": messages,
            "tools": list(tools),
            "tool_choice": tool_choice,
            "allow_parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The response's `ToolCallBlock`s as `ToolSelection`s."""
        selections = [
            ToolSelection(
                tool_id=b.tool_call_id or "",
                tool_name=b.tool_name,
                tool_kwargs=parse_partial_json(b.tool_kwargs) if isinstance(b.tool_kwargs, str) else b.tool_kwargs,
            )
            for b in response.message.blocks
            if isinstance(b, ToolCallBlock)
        ]
        if not selections and error_on_no_tool_call:
            raise ValueError("Expected at least one tool call, but got 0 tool calls.")
        return selections

    # -- one turn -------------------------------------------------------------------------------

    @staticmethod
    def _turn(messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> Turn:
        tools = kwargs.get("tools") or []
        names = [t.metadata.name for t in tools]
        return Turn.build([_to_needle_message(m) for m in messages], tools, names, kwargs.get("tool_choice"))

    def _route(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> tuple[Turn, Decision]:
        turn = self._turn(messages, kwargs)
        return turn, turn.run(self._engine, self.confidence_threshold, self.fallback is not None)

    async def _aroute(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> tuple[Turn, Decision]:
        turn = self._turn(messages, kwargs)
        return turn, await turn.arun(self._engine, self.confidence_threshold, self.fallback is not None)

    def _reply(self, turn: Turn, decision: Decision, kwargs: dict[str, Any]) -> ChatResponse:
        calls = decision.calls if kwargs.get("allow_parallel_tool_calls") else decision.calls[:1]
        blocks = [TextBlock(text=decision.text)] if decision.text else []
        blocks += [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in calls]
        inputs = count_tokens(turn.messages)
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks),
            delta=decision.text,
            additional_kwargs={
                **decision.metadata(self._engine.model_name, invalid_as_warnings=True),
                "prompt_tokens": inputs,
                "completion_tokens": len(calls),
                "total_tokens": inputs + len(calls),
            },
        )

    def _ask_fallback(self, method: str, turn: Turn, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> Any:
        """Call the fallback's ``method`` (chat, achat, stream_chat, astream_chat).

        A function-calling fallback gets the turn's tools through the ``<method>_with_tools``
        counterpart; any other fallback (or a turn without tools) just chats.
        """
        fallback = self.fallback
        assert fallback is not None
        if not (turn.uses_engine and fallback.metadata.is_function_calling_model):
            return getattr(fallback, method)(messages)
        named = {} if turn.tool_choice in ("auto", "required") else {"tool_choice": turn.tool_choice}
        return getattr(fallback, f"{method}_with_tools")(
            kwargs["tools"],
            chat_history=list(messages),
            allow_parallel_tool_calls=kwargs.get("allow_parallel_tool_calls", False),
            tool_required=turn.tool_choice != "auto",
            **named,
        )

    @staticmethod
    def _mark_fallback(response: ChatResponse, decision: Decision) -> ChatResponse:
        response.additional_kwargs["answered_by"] = "fallback"
        if decision.result is not None:
            response.additional_kwargs["confidence"] = decision.result.confidence
        return response

    # -- chat -----------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        turn, decision = self._route(messages, kwargs)
        if decision.answered_by == "needle":
            return self._reply(turn, decision, kwargs)
        return self._mark_fallback(self._ask_fallback("chat", turn, messages, kwargs), decision)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        turn, decision = await self._aroute(messages, kwargs)
        if decision.answered_by == "needle":
            return self._reply(turn, decision, kwargs)
        return self._mark_fallback(await self._ask_fallback("achat", turn, messages, kwargs), decision)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        turn, decision = self._route(messages, kwargs)

        def gen() -> ChatResponseGen:
            if decision.answered_by == "needle":
                yield self._reply(turn, decision, kwargs)
                return
            for response in self._ask_fallback("stream_chat", turn, messages, kwargs):
                yield self._mark_fallback(response, decision)

        return gen()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        turn, decision = await self._aroute(messages, kwargs)

        async def gen() -> AsyncGenerator[ChatResponse, None]:
            if decision.answered_by == "needle":
                yield self._reply(turn, decision, kwargs)
                return
            async for response in await self._ask_fallback("astream_chat", turn, messages, kwargs):
                yield self._mark_fallback(response, decision)

        return gen()

    # -- completion: a one-message chat -----------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return chat_to_completion_decorator(self.chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await achat_to_completion_decorator(self.achat)(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return stream_chat_to_completion_decorator(self.stream_chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return await astream_chat_to_completion_decorator(self.astream_chat)(prompt, **kwargs)
