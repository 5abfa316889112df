"""OpenAI response bodies and stream chunks, built as plain dicts."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from edgebox.runtimes.base import FinishEvent, TokenEvent, TokenLogprob

Kind = Literal["chat", "completion"]


def new_id(kind: Kind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def _chat_lp(entry: TokenLogprob) -> dict[str, Any]:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes)}


def chat_logprob_content(event: TokenEvent) -> dict[str, Any]:
    assert event.logprob is not None
    return {**_chat_lp(event.logprob), "top_logprobs": [_chat_lp(t) for t in event.top_logprobs]}


@dataclass
class CompletionLogprobs:
    """The legacy /v1/completions logprobs shape, accumulated token by token."""

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def add(self, event: TokenEvent, offset: int) -> None:
        assert event.logprob is not None
        self.tokens.append(event.logprob.token)
        self.token_logprobs.append(event.logprob.logprob)
        self.top_logprobs.append({t.token: t.logprob for t in event.top_logprobs})
        self.text_offset.append(offset)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }


@dataclass
class ChoiceResult:
    """One finished choice of a non-streamed response."""

    text: list[str] = field(default_factory=list)
    chat_logprobs: list[dict[str, Any]] = field(default_factory=list)
    completion_logprobs: CompletionLogprobs = field(default_factory=CompletionLogprobs)
    finish: FinishEvent | None = None
    length: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # `message.tool_calls`


def usage(finishes: list[FinishEvent], n: int) -> dict[str, Any]:
    """Token usage; with n choices per prompt, each prompt is counted once, as OpenAI bills it."""
    per_prompt = finishes[::n]
    prompt = sum(f.prompt_tokens for f in per_prompt)
    cached = sum(f.cached_tokens for f in per_prompt)
    completion = sum(f.completion_tokens for f in finishes)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def finish_reason(event: FinishEvent, *, called: bool = False) -> str:
    """OpenAI's finish reason; `called`: the choice made tool calls (and was not cut off)."""
    if event.reason == "length":
        return "length"
    return "tool_calls" if called else "stop"


class ResponseShape:
    """Everything a response of one request shares: id, timestamps, model, kind."""

    def __init__(self, kind: Kind, model: str, fingerprint: str) -> None:
        self.kind = kind
        self.id = new_id(kind)
        self.created = int(time.time())
        self.model = model
        self.fingerprint = fingerprint

    def _envelope(self, object_: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object_,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    def complete(
        self, choices: list[ChoiceResult], usage_: dict[str, Any], logprobs: bool
    ) -> dict[str, Any]:
        out = []
        for index, choice in enumerate(choices):
            assert choice.finish is not None
            text = "".join(choice.text)
            if self.kind == "chat":
                lp = {"content": choice.chat_logprobs} if logprobs else None
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if choice.tool_calls:
                    message = {**message, "content": text or None, "tool_calls": choice.tool_calls}
                entry = {
                    "index": index,
                    "message": message,
                    "logprobs": lp,
                    "finish_reason": finish_reason(choice.finish, called=bool(choice.tool_calls)),
                }
                if choice.finish.stop_sequence is not None:  # as vLLM reports it
                    entry["stop_reason"] = choice.finish.stop_sequence
                out.append(entry)
            else:
                lp = choice.completion_logprobs.as_dict() if logprobs else None
                out.append(
                    {
                        "index": index,
                        "text": text,
                        "logprobs": lp,
                        "finish_reason": finish_reason(choice.finish),
                    }
                )
        kind = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self._envelope(kind), "choices": out, "usage": usage_}

    def chunk(
        self,
        index: int,
        *,
        text: str | None = None,
        role: bool = False,
        logprobs: Any = None,
        finish: str | None = None,
        with_usage_field: bool = False,
        delta: dict[str, Any] | None = None,
        stop_reason: str | None = None,
    ) -> dict[str, Any]:
        if self.kind == "chat":
            delta = dict(delta or {})
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": text or ""}
            obj = "text_completion"
        choice["logprobs"] = logprobs
        choice["finish_reason"] = finish
        if stop_reason is not None:  # the stop string that ended it, as vLLM reports it
            choice["stop_reason"] = stop_reason
        body = {**self._envelope(obj), "choices": [choice]}
        if with_usage_field:
            body["usage"] = None
        return body

    def usage_chunk(self, usage_: dict[str, Any]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._envelope(obj), "choices": [], "usage": usage_}
