"""Who may use a node: bearer keys with scopes, compared in constant time, with a per-key limit.

Scopes (the compatibility rule, also in the README):

- `/v1/` (inference) needs the inference key (`--api-key`), the fleet key (`--fleet-key`,
  what peers' routers send) or the node's own key from its hub (`member_key`, minted at join,
  what routers logged in to the hub send) when any is set; without any it is open. When the
  member key is the only one, loopback clients need none (the box's own tools, `edgebox
  forward`), as on a node bound to 127.0.0.1; every other address must send it.
- `/admin/` (drain, load and unload models, recent requests) needs the admin key
  (`--admin-key`) from anywhere when one is set; the inference key does not open it. Without an
  admin key, `/admin/` answers loopback clients only, and those must send the inference key
  when the node has one (as before scopes existed); a remote client gets 403 saying to start
  the node with `--admin-key`.
- `/admin/models/pull` (start a pull, read its jobs) also takes the pull key (`--pull-key`):
  what a router that brings models to nodes needs, and nothing else (no drain, no load or
  unload, no recent requests). A request it opens is marked (`state.pull_key_only`): the
  node does not send its own key to peers such a caller names.
- A joined node also takes its hub's blob grants (`blob_grant.py`: signed by the hub, for this
  node, minutes long) on `/v1/blobs/` and `/v1/store/models/` only: fleet members pull model
  bytes with no key of this node's; a grant on any other `/v1/` route is 403. Grants that
  do not hold cost a signature check each: one address gets `BAD_GRANT_BURST` of them, then
  `BAD_GRANT_RATE` a second, then 429 (grants already verified still pass).
- Each key may have at most `per_key_limit` requests in flight; one more gets 429 with
  `Retry-After`, so one client (or one leaked key) cannot hold every slot and queue place.

Keys never reach logs, error bodies or metrics: errors name the option, never the value.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from edgebox.api.anthropic import anthropic_error, is_messages_path
from edgebox.api.blob_grant import BLOB_PATHS, GrantError, GrantVerifier
from edgebox.api.blob_grant import PREFIX as GRANT_PREFIX
from edgebox.api.netguard import TokenBuckets

PROTECTED_PREFIXES = ("/v1/", "/admin/")
PULL_PREFIX = "/admin/models/pull"  # what the pull key opens (and nothing else)
DEFAULT_PER_KEY_LIMIT = 128  # in-flight requests per key; above the node's slots plus its queue
KEY_RETRY_AFTER_S = 1
_GRANT_PREFIX = GRANT_PREFIX.encode()
# a bad blob grant costs a signature check (about 3 times a wrong key's whole request): from
# one client address at most this many, then this many a second, else 429 without one
BAD_GRANT_BURST, BAD_GRANT_RATE = 64, 10.0


def _error(message: str, code: str, type: str = "invalid_request_error") -> bytes:
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    return json.dumps(body).encode()


_UNAUTHORISED = _error(
    "missing or incorrect API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')",
    "invalid_api_key",
)
_ADMIN_UNAUTHORISED = _error(
    "missing or incorrect admin key: /admin/ routes take the node's admin key "
    "(--admin-key / EDGEBOX_ADMIN_KEY on the node), not its inference key",
    "invalid_admin_key",
)
_ADMIN_NEEDS_KEY = _error(
    "this node has no API key, so its /admin/ routes answer only on loopback; "
    "start it with --api-key (or EDGEBOX_API_KEY) to administer it from elsewhere",
    "admin_needs_api_key",
)
_ADMIN_NEEDS_ADMIN_KEY = _error(
    "this node has no admin key, so its /admin/ routes answer only on loopback; start it with "
    "--admin-key (or EDGEBOX_ADMIN_KEY) to administer it from elsewhere",
    "admin_needs_admin_key",
)


_GRANT_OUT_OF_SCOPE = _error(
    "a blob grant opens /v1/blobs/ and /v1/store/models/ only; other routes take an API key",
    "grant_out_of_scope",
    "permission_error",
)


def _bad_grant(why: str) -> bytes:
    return _error(why, "invalid_blob_grant", "authentication_error")


_TOO_MANY_BAD_GRANTS = _error(
    "too many blob grants that did not hold came from this address; retry in a second "
    "with a fresh grant from the hub",
    "too_many_bad_grants",
    "rate_limit_error",
)


def _busy(limit: int) -> bytes:
    return _error(
        f"this API key already has {limit} requests in flight on this node (the per-key "
        "limit); retry when one finishes",
        "key_concurrency_limit",
        "rate_limit_error",
    )


def is_loopback(host: str) -> bool:
    """A loopback address or "localhost" (a bind host, a client address or a URL's host)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


async def _refuse(
    scope: Scope, send: Send, status: int, body: bytes, *extra: tuple[bytes, bytes]
) -> None:
    if is_messages_path(scope["path"]):  # Anthropic clients read their own error shape
        message = json.loads(body)["error"]["message"]
        body = json.dumps(anthropic_error(status, None, message)).encode()
    headers = [(b"content-type", b"application/json"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _bearer(scope: Scope) -> bytes:
    """The key a client sent: `Authorization: Bearer <key>`, else `x-api-key` (Anthropic's)."""
    api_key = b""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
        if name == b"x-api-key":
            api_key = value.strip()
    return api_key


def _client_host(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def _matches(supplied: bytes, keys: Sequence[bytes]) -> list[int]:
    """Indexes of the keys equal to `supplied`; every key is compared (no early exit)."""
    return [i for i, key in enumerate(keys) if hmac.compare_digest(supplied, key)]


@dataclass(frozen=True)
class NodeKeys:
    """The keys a node takes; empty strings are treated as unset."""

    api_key: str | None = None  # inference scope, for clients
    admin_key: str | None = None  # admin scope
    fleet_key: str | None = None  # inference scope, for peers' routers (`serve --fleet`)
    per_key_limit: int = DEFAULT_PER_KEY_LIMIT  # 0: no limit
    member_key: str | None = None  # inference scope: this node's key from its hub (join)
    pull_key: str | None = None  # pull scope: start model pulls and read their jobs only
    # hub-signed blob grants (api/blob_grant.py): the blob routes only, for fleet members
    blob_grants: GrantVerifier | None = None

    @property
    def inference(self) -> list[str]:
        return [k for k in (self.api_key, self.fleet_key, self.member_key) if k]

    @property
    def loopback_open(self) -> bool:
        """Loopback clients need no key: the hub's member key is the only one set."""
        return bool(self.member_key) and not (self.api_key or self.fleet_key)


class ScopedKeyMiddleware:
    """Pure ASGI (streamed responses pass through untouched): checks the scope of each request
    and counts the requests each key has in flight until their responses are sent."""

    def __init__(self, app: ASGIApp, keys: NodeKeys) -> None:
        self.app = app
        self.limit = keys.per_key_limit
        self._inference = [k.encode() for k in keys.inference]
        self._admin = keys.admin_key.encode() if keys.admin_key else None
        self._pull = keys.pull_key.encode() if keys.pull_key else None
        self._loopback_open = keys.loopback_open
        self._grants = keys.blob_grants
        self._bad_grants = TokenBuckets(rate=BAD_GRANT_RATE, burst=BAD_GRANT_BURST)
        self._inflight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        holder: str | None
        refusal: tuple[int, bytes] | None
        if self._pull_holder(scope):
            holder, refusal = "pull", None
            scope.setdefault("state", {})["pull_key_only"] = True  # the handler trusts it less
        elif scope["path"].startswith("/admin/"):
            holder, refusal = self._admin_holder(scope)
        else:
            holder, refusal = self._inference_holder(scope)
        if refusal is not None:
            status, body = refusal
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            if status == 429:
                extra = [(b"retry-after", str(KEY_RETRY_AFTER_S).encode())]
            await _refuse(scope, send, status, body, *extra)
            return
        if holder is None:  # an open route: nothing to count
            await self.app(scope, receive, send)
            return
        await self._counted(holder, scope, receive, send)

    def _inference_holder(self, scope: Scope) -> tuple[str | None, tuple[int, bytes] | None]:
        if not self._inference:
            return None, None
        bearer = _bearer(scope)
        if self._grants is not None and bearer.startswith(_GRANT_PREFIX):
            return self._grant_holder(scope, self._grants, bearer)
        matched = _matches(bearer, self._inference)
        if not matched and self._loopback_open and is_loopback(_client_host(scope)):
            return None, None  # the box itself, as on a keyless node bound to loopback
        if not matched:
            return None, (401, _UNAUTHORISED)
        scope.setdefault("state", {})["api_key_index"] = matched[0]
        return f"inference-{matched[0]}", None

    def _pull_holder(self, scope: Scope) -> bool:
        """Whether the request is for the pull routes and carries the pull key."""
        path = scope["path"]
        on_pull = path == PULL_PREFIX or path.startswith(PULL_PREFIX + "/")
        return bool(self._pull and on_pull and _matches(_bearer(scope), [self._pull]))

    def _grant_holder(
        self, scope: Scope, grants: GrantVerifier, bearer: bytes
    ) -> tuple[str | None, tuple[int, bytes] | None]:
        """A blob grant: the blob routes only, for this node, signed by its hub, in time."""
        if not scope["path"].startswith(BLOB_PATHS):
            return None, (403, _GRANT_OUT_OF_SCOPE)
        grant, host = bearer.decode("ascii", "replace"), _client_host(scope)
        if not grants.verified(grant) and self._bad_grants.wait(host) > 0:
            return None, (429, _TOO_MANY_BAD_GRANTS)
        try:
            subject = grants.check(grant)
        except GrantError as exc:
            self._bad_grants.take(host)
            return None, (401, _bad_grant(str(exc)))
        # every member node's grant names one subject ("member"): counted per address too, so
        # one member holding its places does not lock the others out
        return f"grant-{subject}@{host}", None

    def _admin_holder(self, scope: Scope) -> tuple[str | None, tuple[int, bytes] | None]:
        if self._admin is not None:
            if _matches(_bearer(scope), [self._admin]):
                return "admin", None
            return None, (401, _ADMIN_UNAUTHORISED)
        if not is_loopback(_client_host(scope)):
            return None, (403, _ADMIN_NEEDS_ADMIN_KEY if self._inference else _ADMIN_NEEDS_KEY)
        return self._inference_holder(scope)  # loopback: the inference key, as before scopes

    async def _counted(self, holder: str, scope: Scope, receive: Receive, send: Send) -> None:
        held = self._inflight.get(holder, 0)
        if self.limit and held >= self.limit:
            retry = (b"retry-after", str(KEY_RETRY_AFTER_S).encode())
            await _refuse(scope, send, 429, _busy(self.limit), retry)
            return
        self._inflight[holder] = held + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._inflight[holder] -= 1


class LoopbackAdminMiddleware:
    """Without any key, /admin/ (drain, load and unload models) answers loopback clients
    only: a node bound to the LAN without a key must not let any neighbour load files on it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admin = scope["type"] == "http" and scope["path"].startswith("/admin/")
        if admin and not is_loopback(_client_host(scope)):
            await _refuse(scope, send, 403, _ADMIN_NEEDS_KEY)
            return
        await self.app(scope, receive, send)


class APIKeyMiddleware:
    """One scope for every protected route (the router's client keys). Pure ASGI so streamed
    responses pass through untouched.

    With several keys, every one is compared (no early exit) and the index of the one that
    matched is left in `scope["state"]["api_key_index"]` for the app."""

    def __init__(self, app: ASGIApp, api_key: str | Sequence[str]) -> None:
        self.app = app
        self._keys = [k.encode() for k in ([api_key] if isinstance(api_key, str) else api_key)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        matched = _matches(_bearer(scope), self._keys)
        if matched:
            scope.setdefault("state", {})["api_key_index"] = matched[0]
            await self.app(scope, receive, send)
            return
        await _refuse(scope, send, 401, _UNAUTHORISED, (b"www-authenticate", b"Bearer"))
