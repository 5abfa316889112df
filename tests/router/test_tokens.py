"""The router's view of prompts as tokens: a real vocab-only SmolLM2, and the block bookkeeping."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from edgebox.router.nodes import ModelLoad, NodeAddress, NodeStatus
from edgebox.router.tokens import (
    INLINE_CHARS,
    MIN_CHARS,
    RecentBlocks,
    Tokenizers,
    prefix_note,
)
from edgebox.runtimes.llamacpp.runtime import LlamaCppRuntime
from edgebox.runtimes.prefix_blocks import chain

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    loaded = Tokenizers({"from-a-path": "/nonexistent/model.gguf"})
    loaded.load([MODEL, "from-a-path", "all-minilm-l6-v2", "somebody/else"])
    return loaded


def test_only_local_gguf_chat_models_are_tokenized(tokenizers: Tokenizers) -> None:
    assert tokenizers.models[MODEL] is not None and tokenizers.sha256(MODEL)
    # a missing configured file, an ONNX embedding model, a name that is no local model
    assert [tokenizers.models[m] for m in ("from-a-path", "all-minilm-l6-v2", "somebody/else")] == [
        None,
        None,
        None,
    ]
    assert tokenizers.pending([MODEL, "new"]) == ["new"]


def test_prompts_become_the_nodes_tokens(tokenizers: Tokenizers, smollm2_path: Path) -> None:
    runtime = LlamaCppRuntime(smollm2_path, name=MODEL)
    try:
        messages = [
            {"role": "developer", "content": "Answer in French. " * 12},
            {"role": "user", "content": [{"type": "text", "text": "Bonjour?"}]},
        ]
        chat = tokenizers.encode({"model": MODEL, "messages": messages})
        node_text = runtime.render_chat(
            [
                {"role": "system", "content": messages[0]["content"]},
                {"role": "user", "content": "Bonjour?"},
            ]
        )
        node_tokens = runtime.tokenize(node_text)
        assert chat is not None and chat.tokens == len(node_tokens)
        assert list(chat.blocks) == chain(node_tokens)
        prompt = "Once upon a time " * 10
        completion = tokenizers.encode({"model": MODEL, "prompt": prompt})
        assert completion is not None and list(completion.blocks) == chain(runtime.tokenize(prompt))
    finally:
        runtime.close()
    ids = list(range(100, 170))
    assert tokenizers.encode({"model": MODEL, "prompt": ids}).blocks == tuple(chain(ids))  # type: ignore[union-attr]


def test_short_bad_and_unknown_requests_fall_back(tokenizers: Tokenizers) -> None:
    short = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (MIN_CHARS - 1)}]}
    bad_role = {"model": MODEL, "messages": [{"role": "wizard", "content": "x" * 500}]}
    elsewhere = {"model": "somebody/else", "messages": [{"role": "user", "content": "x" * 500}]}
    assert [tokenizers.encode(b) for b in (short, bad_role, elsewhere)] == [None, None, None]


def test_held_blocks_trust_reports_of_the_same_file_and_recent_sends_until_they_expire() -> None:
    def node(name: str, sha: str) -> NodeStatus:
        return NodeStatus(
            NodeAddress(name, f"http://{name}"),
            models={"m": ModelLoad(model_sha256=sha)},
            prefix_blocks={"m": frozenset({f"{name}-reported"})},
        )

    nodes = {"same": node("same", "S"), "other": node("other", "X"), "silent": node("silent", "")}
    recent = RecentBlocks(ttl_s=10.0)
    for name in nodes:
        recent.sent([f"{name}-sent"], name, now=0.0)
    held = recent.held("m", "S", nodes, now=5.0)
    assert "other" not in held  # another model file: neither its report nor our sends count
    assert [b in s for s in held["same"] for b in ("same-reported", "same-sent")] == [
        True,
        False,
        False,
        True,
    ]
    assert len(held["silent"]) == 1 and "silent-sent" in held["silent"][0]  # no digest: sends only
    assert recent.held("m", "S", nodes, now=11.0)["silent"] == []  # expired
    assert prefix_note(("a", "b"), [{"a"}]) == ";prefix=blocks:1/2"
    assert prefix_note((), []) == ";prefix=messages"


def test_long_prompts_are_tokenized_off_the_event_loop(
    tokenizers: Tokenizers, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = Tokenizers.encode

    def spy(self: Tokenizers, body: dict[str, object]) -> object:
        threads.append(threading.current_thread().name)
        return real(self, body)

    monkeypatch.setattr(Tokenizers, "encode", spy)
    short = {"model": MODEL, "prompt": "A quiet morning by the sea. " * 6}
    long = {"model": MODEL, "prompt": "A quiet morning by the sea. " * 200}
    assert len(str(short["prompt"])) < INLINE_CHARS <= len(str(long["prompt"]))

    # Content parts count by their text, so a long prompt in parts goes off the loop too.
    parts = {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": str(long["prompt"])}]},
        ],
    }

    async def both() -> tuple[object, object]:
        await tokenizers.encode_async(parts)
        return await tokenizers.encode_async(short), await tokenizers.encode_async(long)

    got_short, got_long = asyncio.run(both())
    loop_thread = threading.current_thread().name  # asyncio.run's loop runs on this thread
    assert threads[1] == loop_thread  # the short prompt: inline
    assert loop_thread not in (threads[0], threads[2])  # the long ones: in the worker
    assert got_short == real(tokenizers, short) and got_long == real(tokenizers, long)
