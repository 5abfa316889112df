"""Optional bearer API key for the OpenAI and admin routes, compared in constant time."""

from __future__ import annotations

import hmac
import ipaddress
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


_ADMIN_NEEDS_KEY = json.dumps(
    {
        "error": {
            "message": "this node has no API key, so its /admin/ routes answer only on loopback; "
            "start it with --api-key (or EDGEBOX_API_KEY) to administer it from elsewhere",
            "type": "invalid_request_error",
            "param": None,
            "code": "admin_needs_api_key",
        }
    }
).encode()


class LoopbackAdminMiddleware:
    """Without an API key, /admin/ (drain, load and unload models) answers loopback clients
    only: a node bound to the LAN without a key must not let any neighbour load files on it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        host = str(client[0]) if client else ""
        admin = scope["type"] == "http" and scope["path"].startswith("/admin/")
        if admin and not is_loopback(host):
            await _refuse(send, 403, _ADMIN_NEEDS_KEY)
            return
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """A loopback address or "localhost" (a bind host, a client address or a URL's host)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


async def _refuse(send: Send, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
    headers = [(b"content-type", b"application/json"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
        await _refuse(send, 401, _UNAUTHORISED, (b"www-authenticate", b"Bearer"))
