"""Head-cached tokenization (the router's) gives the node's tokens: real vocabularies."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgebox.runtimes.llamacpp.prompt_cache import MIN_CACHED_CHARS
from edgebox.runtimes.llamacpp.runtime import LlamaCppTokenizer
from edgebox.runtimes.prefix_blocks import chain

SYSTEM = "You answer questions about the bakery's opening hours, politely and briefly.\n" * 40


@pytest.mark.parametrize("model", ["smollm2_path", "gemma_path"])
def test_cached_heads_give_the_same_tokens_as_whole_prompts(
    model: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(model)
    tok = LlamaCppTokenizer(path)
    assert tok.cache.enabled, "the self-check at load found the head cache consistent"
    turns = [{"role": "system", "content": SYSTEM}]
    for i, question in enumerate(["When do you open?", " Sundays too?\n\n", "Und  Montag?"]):
        turns.append({"role": "user", "content": question})
        for messages in (turns, [turns[0], {"role": "user", "content": f"Other {i}"}]):
            text = tok.render_chat(messages)
            assert len(text) >= MIN_CACHED_CHARS
            whole = tok.tokenize(text)
            tokens, blocks = tok.encode(text)
            assert list(tokens) == whole and blocks == chain(whole)
        turns.append({"role": "assistant", "content": f"Answer {i}."})
    assert tok.cache._heads, "later prompts reused earlier heads"
    tok.close()
