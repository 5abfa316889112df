"""The OpenAI Agents SDK, unmodified, running an agent with a function tool on a real node
through its chat-completions model and through its default, the Responses model."""

from __future__ import annotations

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from tests.conftest import NodeProcess

MODEL = "smollm2-135m"


@pytest.fixture(autouse=True)
def no_tracing() -> None:
    set_tracing_disabled(True)  # the SDK would otherwise export traces to OpenAI


@pytest.mark.parametrize("model_class", [OpenAIChatCompletionsModel, OpenAIResponsesModel])
def test_an_agent_calls_its_function_tool_on_the_node(
    node: NodeProcess, model_class: type[OpenAIChatCompletionsModel | OpenAIResponsesModel]
) -> None:
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"sunny in {city}"

    client = openai.AsyncOpenAI(base_url=node.base_url, api_key="unused", max_retries=0)
    agent = Agent(
        name="weather",
        instructions="You answer questions about the weather with the get_weather tool.",
        model=model_class(model=MODEL, openai_client=client),
        tools=[get_weather],
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=60),
        tool_use_behavior="stop_on_first_tool",
    )
    result = Runner.run_sync(agent, "What is the weather in Oslo?", max_turns=2)
    assert len(cities) == 1 and cities[0]
    assert result.final_output == f"sunny in {cities[0]}"
