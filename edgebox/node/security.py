"""Optional bearer API key for the OpenAI and admin routes, compared in constant time."""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

PROTECTED_PREFIXES = ("/v1/", "/admin/")

_UNAUTHORISED = json.dumps(
    {
        "error": {
            "message": "missing or incorrect API key: send 'Authorization: Bearer <key>'",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
).encode()


class APIKeyMiddleware:
    """Pure ASGI so streamed responses pass through untouched.

    With several keys, every one is compared (no early exit) and the index of the one that
    matched is left in `scope["state"]["api_key_index"]` for the app."""

    def __init__(self, app: ASGIApp, api_key: str | Sequence[str]) -> None:
        self.app = app
        self._keys = [k.encode() for k in ([api_key] if isinstance(api_key, str) else api_key)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        supplied = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    supplied = token.strip()
                break
        matched = [i for i, key in enumerate(self._keys) if hmac.compare_digest(supplied, key)]
        if matched:
            scope.setdefault("state", {})["api_key_index"] = matched[0]
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _UNAUTHORISED})
