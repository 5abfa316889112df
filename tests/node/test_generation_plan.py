"""The node's plan for a request is a value built once from the wire request: pure, no model."""

from __future__ import annotations

from edgebox.api.protocol import ChatCompletionRequest, CompletionRequest
from edgebox.node.prompts import PreparedPrompt, generation_plan, logprobs_of, max_tokens_of


def test_a_chat_plan_carries_limits_sampling_per_choice_and_the_stream_shape() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "n": 3,
            "seed": 7,
            "temperature": 0.5,
            "max_completion_tokens": 9,
            "max_tokens": 20,
            "stop": "END",
            "logprobs": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    plan = generation_plan(body, [PreparedPrompt([1, 2, 3], "hi")], arrived=5.0, timeout=30.0)
    assert max_tokens_of(body) == (9, "max_completion_tokens") and logprobs_of(body) == 0
    assert (plan.kind, plan.model, plan.prompt_param, plan.n) == ("chat", "m", "messages", 3)
    assert (plan.max_tokens, plan.stop, plan.stream, plan.include_usage) == (
        9,
        ("END",),
        True,
        True,
    )
    assert plan.logprobs and plan.prompt_tokens == 3 and plan.echo_texts() is None
    requests = plan.requests()
    assert [r.sampling.seed for r in requests] == [7, 8, 9]
    assert {(r.sampling.temperature, r.max_tokens, r.timeout) for r in requests} == {(0.5, 9, 30.0)}


def test_seed_minus_one_leaves_every_choice_a_fresh_seed() -> None:
    """llama.cpp's "random seed" (-1) with n > 1: no choice gets a fixed seed (-1 + 1 = 0
    gave the second choice the same reply every time)."""
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3, "seed": -1}
    )
    plan = generation_plan(body, [PreparedPrompt([1, 2, 3], "hi")], arrived=5.0, timeout=30.0)
    assert [r.sampling.seed for r in plan.requests()] == [None, None, None]


def test_a_completion_plan_numbers_choices_prompt_major_and_echoes() -> None:
    body = CompletionRequest.model_validate(
        {"model": "m", "prompt": ["a", "b"], "n": 2, "echo": True, "max_tokens": 4}
    )
    prompts = [PreparedPrompt([1], "a"), PreparedPrompt([2], "b")]
    plan = generation_plan(body, prompts, arrived=0.0, timeout=None, kv_key="k")
    assert (plan.kind, plan.prompt_param, plan.kv_key, plan.logprobs) == (
        "completion",
        "prompt",
        "k",
        False,
    )
    assert plan.echo_texts() == ["a", "b"] and not plan.include_usage
    assert [list(r.prompt_tokens) for r in plan.requests()] == [[1], [1], [2], [2]]
