"""Run a node's app under uvicorn until interrupted, then release the runtimes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn
from starlette.types import ASGIApp

from edgebox.api.auth import NodeKeys, is_loopback
from edgebox.api.conn_guard import (
    ConnectionLimits,
    guarded_protocol,
    http_protocol,
    raise_open_file_limit,
)
from edgebox.node.app import create_app
from edgebox.node.identity_api import NodeSigner
from edgebox.node.state import NodeState

if TYPE_CHECKING:
    from edgebox.fleet.mdns import Advertiser
    from edgebox.router.config import RouterConfig
    from edgebox.router.sources import PeerRecords

log = logging.getLogger(__name__)


def serve(
    state: NodeState,
    *,
    host: str,
    port: int,
    api_key: str | None = None,
    keys: NodeKeys | None = None,
    signer: NodeSigner | None = None,
    access_log: bool = False,
    on_ready: Callable[[str], None] | None = None,
    advertiser: Advertiser | None = None,
    fleet: list[str] | None = None,
    fleet_config: RouterConfig | None = None,
    hub_peers: PeerRecords | None = None,
    trust_lan: bool = False,
    limits: ConnectionLimits | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn finishes open responses before returning.

    `keys` (or just `api_key`, the inference key) guard the routes by scope; `signer` proves
    the node's identity to routers. `advertiser` publishes the node over mDNS once the port is
    bound and says goodbye at exit. `fleet` (a list of peer URLs, possibly empty) puts the
    router in front of this node's OpenAI routes on the same port (`edgebox.router.embed`);
    mDNS peers join when advertising (requests only once verified, or with `trust_lan`),
    `fleet_config` (`--router-config`) adds its nodes, cloud upstreams and settings, and
    `hub_peers` (the heartbeat, once joined to a hub) the hub's other online nodes.
    `limits` bound slow and numerous connections (`node.conn_guard`).
    """
    keys = keys or NodeKeys(api_key=api_key)
    app: ASGIApp = create_app(state, keys=keys, signer=signer)
    fleet_parts = None
    if fleet is not None:
        from edgebox.router.embed import FleetDispatch, fleet_router

        own_id = str(state.node.get("id")) if state.node else None
        router, local, router_app = fleet_router(
            fleet, mdns=advertiser is not None, api_key=keys.api_key, own_id=own_id,
            config=fleet_config, hub_peers=hub_peers, fleet_key=keys.fleet_key,
            trust_lan=trust_lan,
        )  # fmt: skip
        app = FleetDispatch(app, router_app)
        fleet_parts = (router, local)
    raise_open_file_limit()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=access_log,
        timeout_graceful_shutdown=5,
        lifespan="off",
        # scope["client"] stays the real peer: keyless /admin/ answers only loopback clients,
        # so a forwarded-for header from a local proxy must not decide who that is.
        proxy_headers=False,
        http=guarded_protocol(http_protocol(), limits or ConnectionLimits()),
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        bound = server.servers[0].sockets[0].getsockname() if server.servers else (host, port)
        if server.started and on_ready:
            on_ready(f"http://{_url_host(host)}:{bound[1]}")
        if advertiser is not None:  # /admin/models load|unload: new TXT digest
            # Listen before the advert starts: a load that ends while it is being registered
            # must still reach it (update_models before start only sets the list it starts with).
            advertiser.models = list(state.all_models())
            state.on_models_changed.append(advertiser.update_models)
        advertised = (
            server.started
            and advertiser is not None
            and await _advertise(advertiser, host, bound[1])
        )
        if fleet_parts is not None and server.started:
            from edgebox.router.app import start_router

            fleet_parts[1].url = f"http://{_url_host(host)}:{bound[1]}"
            await start_router(fleet_parts[0])
        try:
            await task
        finally:
            if advertised and advertiser is not None:
                await advertiser.stop()
            if fleet_parts is not None:
                from edgebox.router.app import stop_router

                await stop_router(fleet_parts[0])

    try:
        asyncio.run(run())
    finally:
        for runtime in state.all_models().values():
            runtime.close()


async def _advertise(advertiser: Advertiser, host: str, port: int) -> bool:
    """Start mDNS; a failure is logged and the node serves on (mDNS is only a hint)."""
    try:
        await advertiser.start(port, api_on_lan=not is_loopback(host))
    except Exception as exc:
        log.warning("mDNS advertising is off: %s", exc)
        return False
    return True


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
