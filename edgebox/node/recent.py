"""The node's last finished requests, for `GET /admin/requests` and `edgebox top`'s detail view.

A bounded ring of plain records: when, which model and route, token counts, time to first
token, duration and status. No prompt text, no headers: nothing a client sent beyond the
model's name. A pure-ASGI middleware opens a `RequestRecord` per request on the recorded routes
(handlers fill in the model and tokens through `usage_of(request)`) and files it once the
response, streamed or not, has been sent.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RECENT_REQUESTS = 50
_STATE_KEY = "edgebox_request_record"

# Route templates recorded, and the kind each is shown as.
RECORDED_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/messages": "messages",
    "/v1/embeddings": "embedding",
    "/v1/responses": "responses",
    "/v1/edgebox/kv/prefill": "kv_prefill",
    "/v1/edgebox/kv/{model:path}": "kv_import",
}


@dataclass
class RequestRecord:
    """One request as it finished; the handler fills in what it learns on the way."""

    at: float  # unix time the request arrived
    kind: str  # chat, completion, messages, embedding, responses, kv_prefill, kv_import
    model: str | None = None
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None  # arrival to the first generated token
    duration_s: float = 0.0
    stream: bool = False

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ttft_s"] = None if self.ttft_s is None else round(self.ttft_s, 4)
        out["duration_s"] = round(self.duration_s, 4)
        return out


class RecentRequests:
    """The last `size` finished requests, newest last."""

    def __init__(self, size: int = RECENT_REQUESTS) -> None:
        self._ring: deque[RequestRecord] = deque(maxlen=size)

    def add(self, record: RequestRecord) -> None:
        self._ring.append(record)

    def newest_first(self, limit: int | None = None) -> list[RequestRecord]:
        records = list(reversed(self._ring))
        return records if limit is None else records[:limit]


def usage_of(request: Request) -> RequestRecord:
    """This request's record (a throwaway one when the middleware is not installed)."""
    record = request.scope.get("state", {}).get(_STATE_KEY)
    if isinstance(record, RequestRecord):
        return record
    return RequestRecord(at=time.time(), kind="other")


class RecentRequestsMiddleware:
    """Files a record per request on `RECORDED_ROUTES` once the response is complete."""

    def __init__(self, app: ASGIApp, recent: RecentRequests) -> None:
        self.app = app
        self.recent = recent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record = RequestRecord(at=time.time(), kind="other")
        scope.setdefault("state", {})[_STATE_KEY] = record

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            kind = RECORDED_ROUTES.get(getattr(scope.get("route"), "path", ""))
            if kind is not None:
                record.kind = kind
                record.status = record.status or 500
                record.duration_s = time.perf_counter() - started
                self.recent.add(record)
