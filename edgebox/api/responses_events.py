"""Responses stream events from chat.completion.chunk dicts: the order clients parse.

`start()` gives response.created and response.in_progress; each `feed(chunk)` the events its
delta makes (a message item and its text part opened on the first text, a function_call item
per tool call, each closed when the next item starts); `finish()` closes what is open and
ends with response.completed (response.incomplete at the token limit); a chunk carrying an
`error` ends the stream with `error` and response.failed. Every event has a sequence_number.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from edgebox.api.responses_wire import (
    ResponseCreateRequest,
    call_item,
    finished,
    message_item,
    response_shell,
)


def event_bytes(event: dict[str, Any]) -> bytes:
    """One event as server-sent events frame it: its type named, then its JSON."""
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


class ResponseEventStream:
    """One streamed response's events; `response` is the Responses object so far."""

    def __init__(
        self,
        req: ResponseCreateRequest,
        response_id: str,
        created_at: int,
        node_limit: int | None = None,  # the node's `--max-tokens`, when it set the limit
    ) -> None:
        self.response = response_shell(req, response_id, created_at, "in_progress")
        self._node_limit = node_limit
        self._sequence = 0
        self._text: list[str] | None = None  # the open message's text, while one is open
        self._call: dict[str, Any] | None = None  # the open function_call item
        self._call_index: int | None = None  # its index among the chunks' tool_calls
        self._finish_reason: str | None = None
        self._usage: Any = None
        self.done = False

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _snapshot(self, kind: str) -> dict[str, Any]:
        return self._event(kind, response=copy.deepcopy(self.response))

    def start(self) -> list[dict[str, Any]]:
        return [self._snapshot("response.created"), self._snapshot("response.in_progress")]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events one chunk makes (a chunk with `error` fails the response)."""
        if "error" in chunk:
            return self.fail(chunk["error"])
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # Responses have one output; n > 1 is never asked of the chat path
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text_delta(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._call_delta(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return events

    def _output_index(self) -> int:
        return len(self.response["output"]) - 1

    def _text_delta(self, text: str) -> list[dict[str, Any]]:
        events = self._close_call() + self._open_message()
        assert self._text is not None
        self._text.append(text)
        item = self.response["output"][-1]
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=self._output_index(),
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _open_message(self) -> list[dict[str, Any]]:
        if self._text is not None:
            return []
        item = message_item("", status="in_progress")
        self.response["output"].append(item)
        self._text = []
        index = self._output_index()
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event("response.output_item.added", output_index=index, item=copy.deepcopy(item)),
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            ),
        ]

    def _close_text(self) -> list[dict[str, Any]]:
        if self._text is None:
            return []
        text, self._text = "".join(self._text), None
        index = self._output_index()
        done = message_item(text, item_id=self.response["output"][index]["id"])
        self.response["output"][index] = done
        part = done["content"][0]
        where = {"item_id": done["id"], "output_index": index, "content_index": 0}
        return [
            self._event("response.output_text.done", **where, text=text, logprobs=[]),
            self._event("response.content_part.done", **where, part=copy.deepcopy(part)),
            self._event("response.output_item.done", output_index=index, item=copy.deepcopy(done)),
        ]

    def _call_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        index = call.get("index", 0)
        if self._call is None or index != self._call_index:
            events += self._close_text() + self._close_call()
            self._call = call_item(
                {**call, "function": {**(call.get("function") or {}), "arguments": ""}},
                status="in_progress",
            )
            self._call_index = index
            self.response["output"].append(self._call)
            events.append(
                self._event(
                    "response.output_item.added",
                    output_index=self._output_index(),
                    item=copy.deepcopy(self._call),
                )
            )
        fragment = (call.get("function") or {}).get("arguments") or ""
        if fragment:
            self._call["arguments"] += fragment
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self._call["id"],
                    output_index=self._output_index(),
                    delta=fragment,
                )
            )
        return events

    def _close_call(self) -> list[dict[str, Any]]:
        if self._call is None:
            return []
        item, self._call, self._call_index = self._call, None, None
        item["status"] = "completed"
        index = self.response["output"].index(item)
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            ),
            self._event("response.output_item.done", output_index=index, item=copy.deepcopy(item)),
        ]

    def finish(self) -> list[dict[str, Any]]:
        """Close the open item and end the stream: response.completed or .incomplete."""
        if self.done:
            return []
        events = self._close_text() + self._close_call()
        if not self.response["output"]:  # no text and no call: an empty message, as OpenAI has
            events += self._open_message() + self._close_text()
        finished(self.response, self._finish_reason, self._usage, self._node_limit)
        self.done = True
        kind = (
            "response.incomplete"
            if self.response["status"] == "incomplete"
            else "response.completed"
        )
        return [*events, self._snapshot(kind)]

    def fail(self, error: dict[str, Any]) -> list[dict[str, Any]]:
        """End the stream on an error: an `error` event, then response.failed."""
        if self.done:
            return []
        self.done = True
        code = error.get("code") or error.get("type") or "server_error"
        message = error.get("message") or "generation failed"
        self.response["status"] = "failed"
        self.response["error"] = {"code": code, "message": message}
        failure = self._event("error", code=code, message=message, param=error.get("param"))
        return [failure, self._snapshot("response.failed")]
