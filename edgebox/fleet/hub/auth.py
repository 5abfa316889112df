"""Who may call a hub route: `@requires(scope)` on every route that is not open.

Every credential is `Authorization: Bearer <value>`. The scopes:
- ``admin``: the hub's admin key (`admin.key` in its data dir), compared in constant time;
- ``reader``: the admin key or a user's read token (`ebu_...`, `edgebox hub user add`);
- ``user``: a user's read token only (routes about the user themselves);
- ``node``: a node secret issued at join. The registry matches it in the same step that
  records the beat (`HubRepository.heartbeat`), so the decorator only requires the header and
  hands the secret on as `Caller.credential`; the route answers 401 `unknown_node` itself.
The open routes (health, join and rejoin, whose credential is a token or a signature in the
body) carry no decorator; a test walks the routes and checks that every other one has one.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from edgebox.fleet.hub.context import hub_context
from edgebox.fleet.hub.web import APIError

Scope = Literal["admin", "reader", "user", "node"]
Handler = Callable[[Request], Awaitable[Response]]
USER_TOKEN_PREFIX = "ebu_"


@dataclass(frozen=True)
class Caller:
    """Who a guarded request came from; in `request.state.caller`."""

    scope: Scope  # the scope the route required
    kind: Literal["admin", "user", "node"]
    credential: str  # the bearer value (a node route needs its secret)
    user: str | None = None  # the user whose read token it was


def requires(scope: Scope) -> Callable[[Handler], Handler]:
    """Refuse the request with 401 unless its bearer grants `scope`; the handler runs with
    `request.state.caller` set. The route's scope is kept as `endpoint.hub_scope`."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: Request) -> Response:
            request.state.caller = await authenticate(request, scope)
            return await handler(request)

        guarded.hub_scope = scope  # type: ignore[attr-defined]
        return guarded

    return decorate


def caller(request: Request) -> Caller:
    """The Caller `requires` recorded for this request."""
    found: Caller = request.state.caller
    return found


async def authenticate(request: Request, scope: Scope) -> Caller:
    """The Caller this request's bearer makes it for `scope`, or a 401 APIError naming why
    (missing_credentials, invalid_user_token, invalid_admin_key)."""
    bearer = _bearer(request)
    if scope == "node":
        return Caller(scope, "node", bearer)
    if scope == "user" and not bearer.startswith(USER_TOKEN_PREFIX):
        raise _refused(
            "this route takes a user's login token (`edgebox login`), not the admin key",
            "invalid_user_token",
        )
    if scope in ("reader", "user") and bearer.startswith(USER_TOKEN_PREFIX):
        store = hub_context(request).store
        user = await asyncio.to_thread(store.user_for_token, bearer)
        if user is None:
            raise _refused(
                "this user token is not valid for this hub (removed?)", "invalid_user_token"
            )
        return Caller(scope, "user", bearer, user=user)
    admin_key = hub_context(request).config.admin_key
    if not hmac.compare_digest(bearer.encode(), admin_key.encode()):
        raise _refused("the admin key is not valid for this hub", "invalid_admin_key")
    return Caller(scope, "admin", bearer)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise _refused("missing 'Authorization: Bearer <key>' header", "missing_credentials")
    return value.strip()


def _refused(message: str, code: str) -> APIError:
    return APIError(401, message, type="authentication_error", code=code)
