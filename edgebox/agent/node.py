"""`NodeAgent`: a node's start-up and shutdown, in one place and in order.

Start: runtimes (and the node identity), the HTTP server (uvicorn and the node's app), the
local node record (tools on this box find the node on any port), the mDNS advert, the hub
heartbeat and relay tunnel (once joined), the router in front (`serve --fleet`), the banner.
Stop (SIGINT/SIGTERM, or a step failing part-way): the same parts in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console

from edgebox.agent.banner import print_banner
from edgebox.agent.config import AgentError, NodeConfig
from edgebox.agent.runtimes import Runtimes, fit_budget, open_runtimes, resolve_models

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from edgebox.api.auth import NodeKeys
    from edgebox.api.blob_grant import GrantVerifier
    from edgebox.api.response_store import ResponseStore
    from edgebox.fleet.heartbeat import Heartbeat
    from edgebox.fleet.identity import NodeIdentity
    from edgebox.fleet.mdns import Advertiser
    from edgebox.node.server import NodeServer
    from edgebox.node.state import NodeState
    from edgebox.router.embed import LocalNode
    from edgebox.router.service import Router
    from edgebox.runtimes.open import RuntimeOptions

log = logging.getLogger(__name__)


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM (systemd's stop, `kill`) ends the node as Ctrl-C does. uvicorn catches the
    signal, finishes open responses, then raises it again under the handler that was there
    before it: with the default one the process would die there, before the agent withdraws
    its mDNS advert and local record and closes its runtimes."""
    raise KeyboardInterrupt


class NodeAgent:
    """One node process: `run` starts it, serves until a signal, and stops it."""

    def __init__(
        self, config: NodeConfig, *, out: Console | None = None, err: Console | None = None
    ) -> None:
        self.config = config
        self.out = out or Console()
        self.err = err or Console(stderr=True)
        self.options: RuntimeOptions = config.runtime_options()
        self.runtimes = Runtimes()
        self.identity: NodeIdentity | None = None
        self.state: NodeState | None = None
        self.http: NodeServer | None = None
        self._hub_peers = HeartbeatPeers()  # the heartbeat's, once joined to a hub
        self._router: Router | None = None  # in front of the node (`serve --fleet`)
        self._local: LocalNode | None = None  # this node, as that router's first node
        self._grants: GrantVerifier | None = None  # peers' blob grants, once joined

    def run(self) -> None:
        """Open the runtimes, then serve until SIGINT/SIGTERM (uvicorn finishes open responses;
        SIGINT ends in KeyboardInterrupt, as Python's asyncio has it); every runtime is closed
        by the time this returns or raises. `AgentError`: a start-up step the user can fix."""
        self.open()
        main = threading.current_thread() is threading.main_thread()  # signals go there only
        previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt) if main else None
        try:
            asyncio.run(self._serve())
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
            self.close_runtimes()

    def open(self) -> None:
        """Step one: the runtimes, and the node's identity and state around them."""
        from edgebox.fleet.identity import IdentityError, load_identity
        from edgebox.node.catalog import Available
        from edgebox.node.kv_transfer import KVStore
        from edgebox.node.state import NodeState

        specs: dict[str, str] = {}
        resolved = resolve_models(self.config, self.err, specs)
        loaded, on_disk = fit_budget(resolved, self.config, self.options, self.err)
        self.runtimes = open_runtimes(loaded, self.config, self.options, self.err)
        try:
            self.identity = load_identity()
        except IdentityError as exc:
            self.runtimes.close()
            raise AgentError(str(exc)) from None
        self.state = NodeState(
            self.runtimes.chat,
            embedders=self.runtimes.embedders,
            kv_store=KVStore(max_bytes=self.config.kv_upload_mib << 20),
            node=self.identity.public(),
            runtime_options=self.options,  # models loaded later over /admin take the same
            default_runtime=self.config.runtime,
            fast_paths=self.runtimes.fast_paths,
            memory_budget=self.config.memory_budget,
            keep_alive_s=self.config.keep_alive_s,
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
            responses=self._response_store(),
            share_rate=self.config.share_rate,
            stream_interval=self.config.stream_interval,
            pull_private=self.config.allow_private_pulls,
        )
        self.state.remember_served(specs)
        for model in on_disk:  # loaded on first request (`node/ondemand.py`)
            kind = "embeddings" if model.format == "onnx" else "chat"
            entry = Available.of_file(model.alias, specs[model.alias], kind, "served", model.path)
            self.state.catalog.remember(entry)
        # Once per start, off the serving path: the speed-of-light figure in /health.
        threading.Thread(
            target=self.state.measure_bandwidth, name="bandwidth-probe", daemon=True
        ).start()
        self._open_store(resolved)

    def _open_store(self, resolved: list[Any]) -> None:
        """The node's model store: what it serves is registered (by reference) so peers can
        fetch it, and it takes pulls (`POST /admin/models/pull`)."""
        from edgebox.models.register import register_in_background
        from edgebox.models.store import ModelStore

        assert self.state is not None
        keys = self.config.keys()
        self.state.store = ModelStore()
        self.state.peer_key = keys.fleet_key or keys.api_key
        register_in_background(self.state.store, resolved)
        from edgebox.fleet.blob_peers import PeerFinder

        own = self.state.node.get("id") if self.state.node else None
        self.state.find_peers = PeerFinder(
            lambda: self._hub_peers.peers,
            own_id=str(own) if own else None,
            key=self.state.peer_key,
            mdns=self.config.mdns,
        )

    def _response_store(self) -> ResponseStore:
        from edgebox.api.response_store import ResponseStore
        from edgebox.fleet.identity import edgebox_home

        path = self.config.responses_db or edgebox_home() / "responses.sqlite"
        max_age_s = self.config.responses_max_days * 86400
        return ResponseStore(path, keep=self.config.responses_keep, max_age_s=max_age_s)

    def close_runtimes(self) -> None:
        """Every runtime the node serves, those loaded later over /admin included."""
        if self.state is None:
            self.runtimes.close()
            return
        for runtime in self.state.all_models().values():
            runtime.close()
        self.state.responses.close()

    async def _serve(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            url = await self._start_http(stack)
            if url is None:  # uvicorn did not start: wait raises why
                await self._wait()
                return
            self._register_locally(stack, url)
            await self._advertise(stack)
            self._join_hub(stack)
            await self._start_fleet_router(stack, url)
            keyed = bool(self.config.api_key)
            threads = self.options.n_threads
            print_banner(self.out, url, self.runtimes, threads=threads, keyed=keyed)
            await self._wait()

    async def _wait(self) -> None:
        assert self.http is not None
        await self.http.wait()

    async def _start_http(self, stack: contextlib.AsyncExitStack) -> str | None:
        from edgebox.node.identity_api import NodeSigner
        from edgebox.node.server import NodeServer

        assert self.identity is not None and self.state is not None
        wrap = self._fleet_front() if self.config.fleet else None
        signer = NodeSigner.from_key_file(self.identity.node_id, self.identity.ssh_private_key_path)
        self.http = NodeServer(
            self.state,
            host=self.config.host,
            port=self.config.port,
            keys=self._keys(),
            signer=signer,
            access_log=self.config.access_log,
            wrap=wrap,
        )
        stack.push_async_callback(self.http.stop)
        return await self.http.start()

    def _keys(self) -> NodeKeys:
        """The keys from the command line, the key a joined node's hub minted for it (routers
        logged in to the hub send it), and the hub's blob grants (fleet members' pulls)."""
        from edgebox.fleet.join import blob_grant_verifier, member_api_key

        self._grants = blob_grant_verifier()
        keys = self.config.keys()
        return dataclasses.replace(keys, member_key=member_api_key(), blob_grants=self._grants)

    def _register_locally(self, stack: contextlib.AsyncExitStack, url: str) -> None:
        """The runtime record that lets `edgebox nodes`/`top` here find the node on any port."""
        from edgebox.fleet import local_nodes

        assert self.identity is not None
        record = local_nodes.register(url, self.config.host, self.identity.public())
        if record is not None:
            stack.callback(local_nodes.unregister, record)

    async def _advertise(self, stack: contextlib.AsyncExitStack) -> None:
        """mDNS, when on; a failure is logged and the node serves on (mDNS is only a hint)."""
        if not self.config.mdns:
            return
        from edgebox.api.auth import is_loopback
        from edgebox.fleet.mdns import Advertiser
        from edgebox.hardware import probe

        assert self.identity is not None and self.state is not None and self.http is not None
        accel = probe(measure=False).hw_class
        advertiser = Advertiser(
            self.identity, accelerator=accel, models=list(self.state.all_models())
        )
        # Listen before the advert starts: a load that ends while it is being registered must
        # still reach it (update_models before start only sets the list it starts with).
        self.state.on_models_changed.append(advertiser.update_models)
        try:
            await advertiser.start(self.http.port, api_on_lan=not is_loopback(self.config.host))
        except Exception as exc:
            log.warning("mDNS advertising is off: %s", exc)
            return
        stack.push_async_callback(_goodbye, advertiser)

    def _join_hub(self, stack: contextlib.AsyncExitStack) -> None:
        """Heartbeats (only once joined to a hub) and the relay tunnel (once joined to a hub
        that runs a relay, unless --no-tunnel)."""
        from edgebox.api.auth import is_loopback
        from edgebox.fleet.heartbeat import api_endpoint, start_background

        state = self.state
        assert state is not None
        api = api_endpoint(self.config.port, loopback_only=is_loopback(self.config.host))
        beats = start_background(
            models=lambda: list(state.all_models()),
            api=api,
            peer_keys=self.config.fleet,  # a --fleet node routes to its peers with their keys
            blobs=state.store.digests if state.store is not None else list,
            grants=self._grants,
        )
        if beats is not None:
            self._hub_peers.beats = beats
            stack.push_async_callback(asyncio.to_thread, beats.stop)
        if self.config.tunnel:
            from edgebox.fleet.node_tunnel import start_background as start_tunnel

            tunnel = start_tunnel()
            if tunnel is not None:
                stack.push_async_callback(asyncio.to_thread, tunnel.stop)

    def _fleet_front(self) -> Callable[[ASGIApp], ASGIApp]:
        """`serve --fleet`: the router in front of this port's OpenAI routes. It is built
        here, before the port is bound, so that it answers from the first request, and
        started (polling) only once the node and its heartbeat are up."""
        from edgebox.agent.router import build_router, fleet_spec
        from edgebox.fleet.join import load_fleet
        from edgebox.router.embed import FleetDispatch, LocalNode

        assert self.state is not None
        config = self.config
        self._local = LocalNode()
        spec = fleet_spec(
            config.router_config,
            peers=config.fleet_nodes,
            mdns=config.mdns,
            api_key=config.api_key or None,
            fleet_key=config.fleet_key or None,
            trust_lan=config.trust_lan,
            local=self._local,
            own_id=str(self.state.node.get("id")) if self.state.node else None,
            hub_peers=self._hub_peers if load_fleet() is not None else None,
        )
        self._router, router_app = build_router(spec)
        return lambda node_app: FleetDispatch(node_app, router_app)

    async def _start_fleet_router(self, stack: contextlib.AsyncExitStack, url: str) -> None:
        if self._router is None or self._local is None:
            return
        from edgebox.router.app import start_router, stop_router

        self._local.url = url  # this node, as the router's first node
        stack.push_async_callback(stop_router, self._router)
        await start_router(self._router)


class HeartbeatPeers:
    """The hub's other nodes, from this node's heartbeat answers once it beats (the router
    in front is built before the heartbeat starts)."""

    def __init__(self) -> None:
        self.beats: Heartbeat | None = None

    @property
    def peers(self) -> list[dict[str, Any]]:
        return self.beats.peers if self.beats is not None else []

    @property
    def hub_url(self) -> str:
        return self.beats.hub_url if self.beats is not None else ""


async def _goodbye(advertiser: Advertiser) -> None:
    await advertiser.stop()  # goodbye packets: browsers drop this node at once
