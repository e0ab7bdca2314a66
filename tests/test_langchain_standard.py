"""LangChain's standard chat-model suites, run on ChatNeedle with the real bundled model, offline."""

from __future__ import annotations

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from needle_adapters.langchain import ChatNeedle


class NeedleParams:
    """The model under test, for both suites."""

    @property
    def chat_model_class(self) -> type[ChatNeedle]:
        return ChatNeedle

    @property
    def chat_model_params(self) -> dict:
        return {}  # ChatNeedle() loads the bundled model


class TestChatNeedleUnit(NeedleParams, ChatModelUnitTests):
    pass


class TestChatNeedleIntegration(NeedleParams, ChatModelIntegrationTests):
    @pytest.mark.xfail(
        reason="forces magic_function(input: int) on 'Hello!', which holds no number: Needle copies argument "
        "values from the request and returns no call (with a warning) rather than invent one"
    )
    def test_tool_choice(self, model: BaseChatModel) -> None:
        super().test_tool_choice(model)
