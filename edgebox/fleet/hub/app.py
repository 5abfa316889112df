"""The hub's HTTP API (Starlette), assembled: the routes of routes_*.py, the shared state in
`app.state.hub` (context.HubContext), the error handlers, the offline sweeper, and the
per-address rate limits around it all (limits.py). Exact routes in docs/architecture.md;
who may call which is `@requires(scope)` on each route (auth.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edgebox.api.errors import (
    APIError,
    api_error_handler,
    http_error_handler,
    unhandled_error_handler,
)
from edgebox.fleet.hub import (
    routes_keys,
    routes_membership,
    routes_nodes,
    routes_tokens,
    routes_users,
)
from edgebox.fleet.hub.context import HubConfig, HubContext, hub_context
from edgebox.fleet.hub.limits import RateLimit
from edgebox.fleet.hub.models import NodeApi, observed_api_url
from edgebox.fleet.hub.repository import HubRepository

log = logging.getLogger("edgebox.hub")
MISSED_BEATS = 3  # a node is offline after this many heartbeat intervals without one

__all__ = ["ROUTES", "HubConfig", "NodeApi", "create_app", "observed_api_url"]


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "fingerprint": hub_context(request).config.fingerprint})


ROUTES: list[BaseRoute] = [
    Route("/health", health),
    *routes_membership.ROUTES,
    *routes_nodes.ROUTES,
    *routes_tokens.ROUTES,
    *routes_users.ROUTES,
    *routes_keys.ROUTES,
]


def create_app(
    store: HubRepository, config: HubConfig, on_shutdown: Callable[[], None] | None = None
) -> RateLimit:
    """The hub app behind its rate limits; `on_shutdown` runs when the server stops (uvicorn
    re-raises SIGTERM after its shutdown, so code after `uvicorn.run` may never run)."""
    handlers = {
        APIError: api_error_handler,
        HTTPException: http_error_handler,
        Exception: unhandled_error_handler,
    }
    app = Starlette(routes=ROUTES, exception_handlers=handlers, lifespan=lifespan)
    app.state.hub = HubContext(store, config)
    app.state.on_shutdown = on_shutdown
    return RateLimit(app, config.limits)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Rewrite the relay files at start, sweep offline nodes while serving, and run the app's
    `on_shutdown` at the end."""
    hub: HubContext = app.state.hub
    await hub.sync_relay()
    await hub.load_blobs()
    sweeper = asyncio.create_task(sweep_offline(hub))
    yield
    sweeper.cancel()
    if app.state.on_shutdown is not None:
        await asyncio.to_thread(app.state.on_shutdown)


async def sweep_offline(hub: HubContext) -> None:
    """Mark nodes offline after MISSED_BEATS intervals of silence, and drop the blob registry
    entries of nodes silent for over BLOB_TTL_S; checked twice an interval."""
    interval = hub.config.heartbeat_interval
    while True:
        await asyncio.sleep(interval / 2)
        t = hub.now()
        try:
            gone = await asyncio.to_thread(
                hub.store.mark_offline, older_than=t - MISSED_BEATS * interval, now=t
            )
        except Exception:  # a locked or full disk must not end the sweeper for good
            log.exception("offline sweep failed; retrying")
            continue
        for node_id in gone:
            log.warning("node %s offline: no heartbeat for %d intervals", node_id, MISSED_BEATS)
        try:
            await hub.forget_stale_blobs()
        except Exception:
            log.exception("dropping stale blob registry entries failed; retrying")
