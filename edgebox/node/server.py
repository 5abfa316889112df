"""Run a node's app under uvicorn until interrupted, then release the runtimes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import uvicorn

from edgebox.node.app import create_app
from edgebox.node.state import NodeState


def serve(
    state: NodeState,
    *,
    host: str,
    port: int,
    api_key: str | None = None,
    access_log: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn finishes open responses before returning."""
    app = create_app(state, api_key=api_key)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=access_log,
        timeout_graceful_shutdown=5,
        lifespan="off",
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started and on_ready:
            bound = server.servers[0].sockets[0].getsockname() if server.servers else (host, port)
            on_ready(f"http://{_url_host(host)}:{bound[1]}")
        await task

    try:
        asyncio.run(run())
    finally:
        for runtime in state.all_models().values():
            runtime.close()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
