"""Requests as the node will see them: token counts and chained prefix-block hashes.

For a model whose GGUF the router has locally (a bundled model, or a path named under
`[tokenizers]` in the router config) the router loads the vocabulary only, renders chat
messages with the node's own template code (`edgebox.node.prompts.chat_prompt`) and hashes
the tokens in blocks (`edgebox.runtimes.prefix_blocks`), so it can compare a request with
the blocks each node reports in /health. Models it cannot tokenize, prompts shorter than a
block, and requests the node would refuse fall back to message-level affinity keys and a
characters/4 size estimate (`placement.prefix_keys`, `placement.estimate_prompt_tokens`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgebox.api.errors import APIError
from edgebox.api.protocol import ChatCompletionRequest, chat_messages
from edgebox.models.bundled import BUNDLED
from edgebox.models.digest import file_sha256
from edgebox.models.resolve import ModelNotAvailable, resolve_model
from edgebox.router.nodes import NodeStatus
from edgebox.runtimes.base import BackendError
from edgebox.runtimes.prefix_blocks import BLOCK_TOKENS, chain, matched_blocks

log = logging.getLogger("edgebox.router")

MIN_CHARS = BLOCK_TOKENS * 4  # shorter prompts cannot fill one block: not worth tokenizing
# Longer prompts are tokenized in a worker thread: a new 4k-token prompt takes ~9 ms here,
# which would hold up every other request's relaying if done on the event loop.
INLINE_CHARS = 2048
RECENT_BLOCKS = 4096  # per node: blocks this router sent there, until a poll reports them


@dataclass(frozen=True)
class PromptBlocks:
    tokens: int  # exact prompt length, as the node will count it
    blocks: tuple[str, ...]  # chained hashes of its full blocks


@dataclass
class LocalModel:
    tokenizer: Any  # LlamaCppTokenizer (imported lazily: llama.cpp loads only when needed)
    sha256: str  # the GGUF's digest; nodes reporting another one have other tokens


class Tokenizers:
    """Vocab-only models by served name, loaded once each (off the event loop)."""

    def __init__(self, paths: Mapping[str, str] | None = None) -> None:
        self.paths = dict(paths or {})
        self.models: dict[str, LocalModel | None] = {}  # None: cannot tokenize this model
        self._lock = threading.Lock()  # one encoder at a time (the head caches are shared)

    def pending(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if n not in self.models]

    def load(self, names: Iterable[str]) -> None:
        """Blocking: resolve and load each model not tried yet; failures are remembered."""
        for name in self.pending(names):
            self.models[name] = self._load_one(name)

    def _load_one(self, name: str) -> LocalModel | None:
        path = self._local_gguf(name)
        if path is None:
            return None
        try:
            from edgebox.runtimes.llamacpp.runtime import LlamaCppTokenizer

            local = LocalModel(LlamaCppTokenizer(path), file_sha256(path))
        except (BackendError, OSError) as exc:
            log.info("cannot tokenize %s here (%s): message-level affinity", name, exc)
            return None
        log.info(
            "tokenizing %s with %s (template %s)", name, path.name, local.tokenizer.template.name
        )
        return local

    def _local_gguf(self, name: str) -> Path | None:
        if name in self.paths:
            path = Path(self.paths[name]).expanduser()
            if not path.is_file():
                log.warning("tokenizers.%s: no file %s", name, path)
                return None
            return path
        bundled = BUNDLED.get(name) or next((m for m in BUNDLED.values() if name in m.names), None)
        if bundled is None or bundled.kind != "chat":
            return None  # never fetch anything on the router's behalf
        try:
            path = resolve_model(name).path
        except ModelNotAvailable:
            return None
        return path if path.suffix.lower() == ".gguf" else None

    async def encode_async(self, body: Mapping[str, Any]) -> PromptBlocks | None:
        """`encode` on the event loop for short prompts; long ones, or any while a long one is
        being tokenized, go to a worker thread so the loop never waits on the tokenizer."""
        if str(body.get("model")) not in self.models:
            return None
        if _size(body) < INLINE_CHARS and self._lock.acquire(blocking=False):
            try:
                return self.encode(body)
            finally:
                self._lock.release()
        return await asyncio.to_thread(self._encode_locked, body)

    def _encode_locked(self, body: Mapping[str, Any]) -> PromptBlocks | None:
        with self._lock:
            return self.encode(body)

    def encode(self, body: Mapping[str, Any]) -> PromptBlocks | None:
        """The request's tokens and block hashes, or None (fall back to message keys).
        Not thread-safe: callers hold `_lock` (see `encode_async`)."""
        local = self.models.get(str(body.get("model")))
        if local is None:
            return None
        encoded = _encode(local.tokenizer, body)
        if encoded is None:
            return None
        return PromptBlocks(len(encoded[0]), tuple(encoded[1]))

    def sha256(self, model: str) -> str | None:
        local = self.models.get(model)
        return local.sha256 if local else None


def _encode(tokenizer: Any, body: Mapping[str, Any]) -> tuple[Sequence[int], list[str]] | None:
    """The node's message handling and template (`chat_messages`, `render_chat`), then its
    tokenizer through the head cache."""
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = sum(_chars(m.get("content")) for m in messages if isinstance(m, dict))
        if chars < MIN_CHARS:
            return None
        try:
            # The node's own parsing and template code, so the tokens are the node's.
            request = ChatCompletionRequest.model_validate(body)
            text = tokenizer.render_chat(chat_messages(request))
        except (ValidationError, APIError, BackendError):
            return None  # the node will refuse it and say why
        return tokenizer.encode(text)
    prompt = body.get("prompt")
    if isinstance(prompt, str) and len(prompt) >= MIN_CHARS:
        return tokenizer.encode(prompt)
    if (
        isinstance(prompt, list)
        and len(prompt) >= BLOCK_TOKENS
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return prompt, chain(prompt)
    return None


def _size(body: Mapping[str, Any]) -> int:
    """Characters of the prompt or the messages' contents (list prompts count as one each)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return sum(_chars(m.get("content")) for m in messages if isinstance(m, dict))
    prompt = body.get("prompt")
    return len(prompt) if isinstance(prompt, str | list) else 0


def _chars(content: object) -> int:
    """Characters of a message's content: a string, or the text of its content parts."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(part["text"])
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return 0


class RecentBlocks:
    """Blocks this router sent to each node lately (trusted for `ttl_s`: between polls, as
    Dynamo's approximate mode), merged with what each node reports."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._sent: dict[str, OrderedDict[str, float]] = {}  # node -> hash -> trusted until

    def sent(self, blocks: Sequence[str], node: str, now: float) -> None:
        recent = self._sent.setdefault(node, OrderedDict())
        for block in blocks:
            recent[block] = now + self.ttl_s
            recent.move_to_end(block)
        while len(recent) > RECENT_BLOCKS:
            recent.popitem(last=False)

    def held(
        self, model: str, sha256: str | None, nodes: Mapping[str, NodeStatus], now: float
    ) -> dict[str, Sequence[Container[str]]]:
        """Per node, the block sets it holds: what it reported, when its model file is the one
        the router tokenizes with (`sha256`), and what this router sent it lately."""
        held: dict[str, Sequence[Container[str]]] = {}
        for name, node in nodes.items():
            load = node.models.get(model)
            if load is None or (load.model_sha256 and load.model_sha256 != sha256):
                continue  # another model file: its tokens, and so its hashes, differ
            reported = node.prefix_blocks.get(model, frozenset())
            sets: list[Container[str]] = [reported] if load.model_sha256 else []
            recent = self._sent.get(name)
            while recent and next(iter(recent.values())) < now:
                recent.popitem(last=False)
            if recent:
                sets.append(recent)
            held[name] = sets
        return held


def prefix_note(blocks: Sequence[str], held: Sequence[Container[str]]) -> str:
    """For the route header: blocks matched on the chosen node, or the message-key fallback."""
    if not blocks:
        return ";prefix=messages"
    return f";prefix=blocks:{matched_blocks(blocks, *held)}/{len(blocks)}"
