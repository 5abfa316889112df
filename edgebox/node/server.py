"""The node's app under uvicorn: bound, served until SIGINT/SIGTERM, stopped.

What runs around it (runtimes, mDNS, heartbeats, the router in front) is the agent's
(`edgebox.agent`); this module knows only the node's own HTTP app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

from edgebox.api.auth import NodeKeys
from edgebox.api.conn_guard import (
    ConnectionLimits,
    guarded_protocol,
    http_protocol,
    raise_open_file_limit,
)
from edgebox.node.app import create_app
from edgebox.node.identity_api import NodeSigner
from edgebox.node.state import NodeState


class NodeServer:
    """`state`'s app (wrapped by `wrap`, e.g. to put a router in front) under uvicorn.

    `keys` (or just `api_key`, the inference key) guard the routes by scope; `signer` proves
    the node's identity to routers; `limits` bound slow and numerous connections
    (`node.conn_guard`). Closing the runtimes stays with the caller."""

    def __init__(
        self,
        state: NodeState,
        *,
        host: str,
        port: int,
        api_key: str | None = None,
        keys: NodeKeys | None = None,
        signer: NodeSigner | None = None,
        access_log: bool = False,
        limits: ConnectionLimits | None = None,
        wrap: Callable[[ASGIApp], ASGIApp] | None = None,
    ) -> None:
        keys = keys or NodeKeys(api_key=api_key)
        app: ASGIApp = create_app(state, keys=keys, signer=signer)
        self.host = host
        self.app = wrap(app) if wrap is not None else app
        raise_open_file_limit()
        config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            log_level="warning",
            access_log=access_log,
            timeout_graceful_shutdown=5,
            lifespan="off",
            # scope["client"] stays the real peer: keyless /admin/ answers only loopback
            # clients, so a forwarded-for header from a local proxy must not decide who that is.
            proxy_headers=False,
            http=guarded_protocol(http_protocol(), limits or ConnectionLimits()),
        )
        self.server = uvicorn.Server(config)
        self.port = port
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str | None:
        """Serve in the background; once the port is bound, its URL (None if uvicorn could
        not start: `wait` then raises what stopped it)."""
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started and not self._task.done():
            await asyncio.sleep(0.05)
        if not self.server.started:
            return None
        if self.server.servers:
            self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{url_host(self.host)}:{self.port}"

    async def wait(self) -> None:
        """Until uvicorn returns: SIGINT/SIGTERM, open responses finished first."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        """Stop serving now (a start-up step after this one failed)."""
        if self._task is not None and not self._task.done():
            self.server.should_exit = True
            await asyncio.wait([self._task])


def url_host(host: str) -> str:
    """`host` as it goes in a URL: a wildcard address as loopback, an IPv6 one in brackets."""
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
