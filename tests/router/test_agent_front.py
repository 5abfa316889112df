"""The router's agent front in process, in front of fake nodes that speak only chat
completions (`test_router_app.FakeNode`): Responses and Messages translated both ways,
conversations kept at the router and on one node, errors in each API's own shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from edgebox.api.protocol import NODE_LIMIT_HEADER
from edgebox.api.sse import SSE_DONE, sse
from edgebox.router.forward import ROUTE_HEADER
from edgebox.router.front import chat_chunks
from tests.router.test_router_app import MODEL, FakeNode, routed


def test_a_response_is_made_by_a_node_kept_at_the_router_and_continued_on_that_node(
    tmp_path: Path,
) -> None:
    nodes = FakeNode(), FakeNode()
    with routed(tmp_path, *nodes) as client:
        first = client.post("/v1/responses", json={"model": MODEL, "input": "Hi."})
        assert first.status_code == 200, first.text
        made = first.json()
        holder = first.headers[ROUTE_HEADER].split(";")[0]
        assert made["object"] == "response" and made["output"][0]["type"] == "message"
        assert made["output"][0]["content"][0]["text"] == f"hi from {holder}"
        turns = [made["id"]]
        for text in ("Again.", "Once more."):
            body = {"model": MODEL, "input": text, "previous_response_id": turns[-1]}
            turn = client.post("/v1/responses", json=body)
            assert turn.headers[ROUTE_HEADER].startswith(f"{holder};reason=affinity:conversation")
            turns.append(turn.json()["id"])
        kept = client.get(f"/v1/responses/{turns[-1]}")
        items = client.get(f"/v1/responses/{turns[-1]}/input_items?order=asc").json()["data"]
        missing = client.post(
            "/v1/responses", json={"model": MODEL, "input": "x", "previous_response_id": "resp_no"}
        )
        other_key = client.get(f"/v1/responses/{turns[0]}", headers={"x-api-key": "someone"})
    assert kept.status_code == 200 and kept.json()["previous_response_id"] == turns[1]
    assert [i.get("role") for i in items if i.get("type") == "message"][:2] == ["user", "assistant"]
    (node,) = [n for n in nodes if n.name == holder]
    assert b"Again." in node.seen[-1]["raw"] and b"hi from" in node.seen[-1]["raw"]  # full history
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "previous_response_id"
    assert other_key.status_code == 404  # another key's responses are not there for it


def test_messages_come_back_in_anthropics_shape_errors_included(tmp_path: Path) -> None:
    asked = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi."}]}
    with routed(tmp_path, FakeNode()) as client:
        message = client.post("/v1/messages", json=asked)
        unknown = client.post("/v1/messages", json={**asked, "model": "nope"})
        bad = client.post("/v1/messages", json={**asked, "max_tokens": "lots"})
        probe = client.head("/")
    assert message.status_code == 200, message.text
    assert message.json()["type"] == "message" and message.json()["stop_reason"] == "end_turn"
    assert message.json()["content"][0]["text"].startswith("hi from ")
    assert unknown.status_code == 404 and unknown.json()["type"] == "error"
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert probe.status_code == 200


def test_a_nodes_400_comes_back_as_that_400_in_each_apis_shape_and_is_not_retried(
    tmp_path: Path,
) -> None:
    picky, other = FakeNode(answer=400), FakeNode(running=2, queued=3)
    with routed(tmp_path, picky, other) as client:
        response = client.post("/v1/responses", json={"model": MODEL, "input": "Hi."})
        message = client.post(
            "/v1/messages",
            json={"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
        )
    assert response.status_code == 400 and response.json()["error"]["code"] == "fake_400"
    assert message.status_code == 400 and message.json()["type"] == "error"
    assert "fake failure 400" in message.json()["error"]["message"]
    assert len(picky.seen) == 2 and other.seen == []


async def _pieces(*parts: bytes):  # type: ignore[no-untyped-def]
    for part in parts:
        yield part


def test_chat_chunks_are_read_back_across_split_reads() -> None:
    import asyncio

    stream = _pieces(
        b'data: {"a": 1}\n', b'\ndata: {"b"', b": 2}\n\n: keep-alive\n\n", b"data: [DONE]\n\n"
    )

    async def read() -> list[object]:
        return [chunk async for chunk in chat_chunks(stream)]

    assert asyncio.run(read()) == [{"a": 1}, {"b": 2}]


class StreamingNode(FakeNode):
    """A fake node whose chat stream sends two text chunks, then ends well or breaks."""

    breaks: bool = False

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.seen.append({"raw": json.dumps(body).encode(), "headers": {}})

            async def chunks() -> AsyncIterator[bytes]:
                for text in ("Hel", "lo"):
                    delta = {"index": 0, "delta": {"content": text}, "finish_reason": None}
                    yield sse({"object": "chat.completion.chunk", "choices": [delta]})
                if self.breaks:
                    raise RuntimeError("the node died mid-stream")
                end = {"index": 0, "delta": {}, "finish_reason": "stop"}
                usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
                yield sse({"object": "chat.completion.chunk", "choices": [end], "usage": usage})
                yield SSE_DONE

            return StreamingResponse(chunks(), media_type="text/event-stream")

        async def health(_: Request) -> JSONResponse:
            return JSONResponse({"status": "ok", "models": {MODEL: {"slots": 2}}})

        routes = [Route("/health", health), Route("/metrics", lambda _: PlainTextResponse(""))]
        return Starlette(routes=[*routes, Route("/v1/chat/completions", chat, methods=["POST"])])


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_streams_are_translated_as_they_come_and_a_broken_one_ends_failed(tmp_path: Path) -> None:
    node = StreamingNode()
    asked = {"model": MODEL, "input": "Hi.", "stream": True}
    with routed(tmp_path, node) as client:
        done = events(client.post("/v1/responses", json=asked).text)
        kept = client.get(f"/v1/responses/{done[-1]['response']['id']}")
        message = client.post(
            "/v1/messages",
            json={
                "model": MODEL,
                "max_tokens": 8,
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            },
        )
        node.breaks = True
        broken = events(client.post("/v1/responses", json=asked).text)
    kinds = [e["type"] for e in done]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed" and done[-1]["response"]["usage"]["input_tokens"] == 5
    assert "".join(e["delta"] for e in done if e["type"] == "response.output_text.delta") == "Hello"
    assert kept.status_code == 200 and kept.json()["output"][0]["content"][0]["text"] == "Hello"
    anthropic_kinds = [e["type"] for e in events(message.text)]
    assert anthropic_kinds[0] == "message_start" and anthropic_kinds[-1] == "message_stop"
    assert "event: content_block_delta" in message.text
    assert [e["type"] for e in broken][-2:] == ["error", "response.failed"]
    assert broken[-2]["code"] == "upstream_failed"


class CappedNode(StreamingNode):
    """A node whose `--max-tokens 2` ended the stream: `length`, its cap in the header (or,
    with `limit` None, a limit the node did not set: the context's end)."""

    limit: str | None = "2"

    def app(self) -> Starlette:
        async def chat(_: Request) -> Response:
            async def chunks() -> AsyncIterator[bytes]:
                end = {"index": 0, "delta": {"content": "Hi"}, "finish_reason": "length"}
                usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
                yield sse({"object": "chat.completion.chunk", "choices": [end], "usage": usage})
                yield SSE_DONE

            said = {NODE_LIMIT_HEADER: self.limit} if self.limit else {}
            return StreamingResponse(chunks(), media_type="text/event-stream", headers=said)

        app = super().app()
        app.router.routes[-1] = Route("/v1/chat/completions", chat, methods=["POST"])
        return app


def test_a_response_stopped_by_the_nodes_max_tokens_is_completed(tmp_path: Path) -> None:
    """Codex fails a turn on `response.incomplete`: output the node's cap ended is complete;
    output cut at a limit the node did not set stays incomplete."""
    capped, cut = CappedNode(), CappedNode()
    cut.limit = None
    asked = {"model": MODEL, "input": "Hi.", "stream": True}
    ends = []
    for node in (capped, cut):
        with routed(tmp_path, node) as client:
            ends.append(events(client.post("/v1/responses", json=asked).text)[-1])
    assert ends[0]["type"] == "response.completed", ends[0]
    assert ends[1]["type"] == "response.incomplete", ends[1]
