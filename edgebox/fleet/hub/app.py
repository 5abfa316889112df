"""The hub's HTTP API (Starlette): join, heartbeat, nodes, tokens, events. Exact routes in
docs/architecture.md. Admin routes take ``Authorization: Bearer <admin key>``; heartbeats take
the node's own secret issued at join."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.api.errors import (
    APIError,
    api_error_handler,
    from_validation_error,
    http_error_handler,
    unhandled_error_handler,
)
from edgebox.api.netguard import log_field
from edgebox.fleet import logins, tokens
from edgebox.fleet.hub.limits import Limits, RateLimit
from edgebox.fleet.hub.models import (
    HeartbeatRequest,
    JoinRequest,
    NodeApi,
    RejoinRequest,
    TokenCreateRequest,
    UserAddRequest,
    observed_api_url,
)
from edgebox.fleet.hub.store import HubStore, JoinRefused, Registration

M = TypeVar("M", bound=BaseModel)
PEERS_REFRESH_S = 1.0  # heartbeat answers share one read of the node table per second
# what a peer needs of another: its name, address, the keys that match and verify its mDNS
# advert (a public key, which the node proves it holds), models; no telemetry, no secrets
PEER_FIELDS = ("id", "name", "api_url", "host_key", "ssh_public_key", "models", "status")

log = logging.getLogger("edgebox.hub")
MAX_BODY = 1 << 20
MISSED_BEATS = 3  # a node is offline after this many heartbeat intervals without one


@dataclass
class HubConfig:
    urls: list[str]  # https:// addresses put into tokens
    fingerprint: str
    admin_key: str
    heartbeat_interval: float = 5.0
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 2222
    ssh_user: str = "edgebox-tunnel"
    ssh_host_key: str | None = None  # the relay sshd's public host key, pinned by nodes
    relay_node_keys: Path | None = None  # authorized_keys of the relay's tunnel account
    relay_user_keys: Path | None = None  # authorized_keys of the relay's jump account
    jump_user: str = "edgebox-jump"  # the relay account people log in to
    clock: Callable[[], float] = field(default=time.time)
    limits: Limits = field(default_factory=Limits)
    # Ends the relay sessions holding these tunnel ports (set when the hub runs the relay).
    end_relay_sessions: Callable[[list[int]], object] | None = None


__all__ = ["HubConfig", "NodeApi", "create_app", "observed_api_url"]


async def _body(request: Request, model: type[M]) -> M:
    too_large = APIError(413, "request body is larger than 1 MiB", code="body_too_large")
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise too_large
    raw = b""
    async for chunk in request.stream():  # chunked bodies are counted as they arrive
        raw += chunk
        if len(raw) > MAX_BODY:
            raise too_large
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise APIError(400, "request body is not valid JSON", code="invalid_json") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise APIError(401, "missing 'Authorization: Bearer <key>' header",
                       type="authentication_error", code="missing_credentials")  # fmt: skip
    return value.strip()


def _require_admin(request: Request, config: HubConfig) -> None:
    if not hmac.compare_digest(_bearer(request).encode(), config.admin_key.encode()):
        raise APIError(401, "the admin key is not valid for this hub",
                       type="authentication_error", code="invalid_admin_key")  # fmt: skip


def _require_reader(request: Request, config: HubConfig, store: HubStore) -> None:
    """The admin key or a user's read token (`edgebox hub user add`)."""
    bearer = _bearer(request)
    if not bearer.startswith("ebu_"):
        _require_admin(request, config)
    elif store.user_for_token(bearer) is None:
        raise APIError(401, "this user token is not valid for this hub (removed?)",
                       type="authentication_error", code="invalid_user_token")  # fmt: skip


def create_app(
    store: HubStore, config: HubConfig, on_shutdown: Callable[[], None] | None = None
) -> RateLimit:
    """The hub app; `on_shutdown` runs when the server stops (uvicorn re-raises SIGTERM after
    its shutdown, so code after `uvicorn.run` may never run)."""
    now = config.clock

    def write_relay_files() -> None:
        from edgebox.fleet.hub.relay_sync import write_node_keys, write_user_keys

        nodes = store.nodes()
        if config.relay_node_keys is not None:
            write_node_keys(config.relay_node_keys, nodes)
        if config.relay_user_keys is not None:
            write_user_keys(config.relay_user_keys, store.users(), nodes)

    async def sync_relay() -> None:
        await asyncio.to_thread(write_relay_files)

    def relay_info() -> dict[str, Any]:
        return {"host": config.ssh_host, "port": config.ssh_port, "tunnel_user": config.ssh_user,
                "jump_user": config.jump_user, "host_key": config.ssh_host_key}  # fmt: skip

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "fingerprint": config.fingerprint})

    async def join(request: Request) -> Response:
        body = await _body(request, JoinRequest)
        reg = Registration(body.name, body.ssh_public_key, body.host_key, body.profile, body.models)
        try:
            node = await asyncio.to_thread(store.redeem, body.token_id, body.secret, reg, now())
        except JoinRefused as refusal:
            log.warning("join refused: token %s: %s", log_field(body.token_id), refusal.code)
            raise APIError(refusal.status, refusal.message, type="join_refused",
                           code=refusal.code) from None  # fmt: skip
        log.info("node %s (%s) joined with token %s", node["id"], log_field(node["name"]),
                 log_field(body.token_id))  # fmt: skip
        await sync_relay()
        return JSONResponse(membership(node), status_code=201)

    async def rejoin(request: Request) -> Response:
        """Re-register a live node, or rotate its key: signed by its current key, no token."""
        body = await _body(request, RejoinRequest)
        try:
            node = await asyncio.to_thread(
                store.rejoin, body.model_dump(), config.fingerprint, now()
            )
        except JoinRefused as refusal:
            log.warning("rejoin refused: %s", refusal.code)
            raise APIError(refusal.status, refusal.message, type="join_refused",
                           code=refusal.code) from None  # fmt: skip
        rotated = node.pop("old_key") is not None
        log.info("node %s (%s) %s", node["id"], log_field(node["name"]),
                 "rotated its key" if rotated else "re-registered")  # fmt: skip
        await sync_relay()
        if rotated:  # the old key's tunnel session ends now; the node reconnects with the new
            await end_sessions([node["tunnel_port"]])
        return JSONResponse(membership(node), status_code=200)

    async def end_sessions(ports: list[int]) -> None:
        if config.end_relay_sessions is not None:
            await asyncio.to_thread(config.end_relay_sessions, ports)

    def membership(node: dict[str, Any]) -> dict[str, Any]:
        return {
            "node_id": node["id"],
            "name": node["name"],
            "node_secret": node["node_secret"],
            "tunnel_port": node["tunnel_port"],
            "hub_ssh": {
                "host": config.ssh_host,
                "port": config.ssh_port,
                "user": config.ssh_user,
                "host_key": config.ssh_host_key,
            },
            "heartbeat_interval": config.heartbeat_interval,
        }

    async def heartbeat(request: Request) -> Response:
        secret = _bearer(request)
        body = await _body(request, HeartbeatRequest)
        api_url = observed_api_url(request.client.host if request.client else None, body.api)
        node = await asyncio.to_thread(
            store.heartbeat, secret, body.telemetry, body.models, now(), api_url
        )
        if node is None:
            raise APIError(401, "this node is not registered on the hub (or was revoked)",
                           type="authentication_error", code="unknown_node")  # fmt: skip
        head = json.dumps({"node_id": node["id"], "status": node["status"],
                           "heartbeat_interval": config.heartbeat_interval})  # fmt: skip
        # `peers` lists every online node, this one included (the node leaves itself out), so
        # the encoded list is shared by every answer within a second.
        answer = head[:-1].encode() + b', "peers": ' + await peers_json() + b"}"
        return Response(answer, media_type="application/json")

    peers_cache: dict[str, Any] = {"at": -1.0, "json": b"[]"}

    async def peers_json() -> bytes:
        """The online nodes as a `serve --fleet` router needs them (name, API address, host key
        to match mDNS adverts, models): no telemetry, no secrets. Read and encoded at most once
        a second, however many nodes beat."""
        if time.monotonic() - peers_cache["at"] >= PEERS_REFRESH_S:
            records = await asyncio.to_thread(store.nodes)
            peers = [
                {k: r.get(k) for k in PEER_FIELDS}
                for r in records
                if r.get("status") == "online" and r.get("api_url")
            ]
            peers_cache["json"] = json.dumps(peers).encode()
            peers_cache["at"] = time.monotonic()
        cached: bytes = peers_cache["json"]
        return cached

    async def list_nodes(request: Request) -> Response:
        await asyncio.to_thread(_require_reader, request, config, store)
        data = await asyncio.to_thread(store.nodes)
        return JSONResponse({"object": "list", "data": data, "relay": relay_info()})

    async def add_user(request: Request) -> Response:
        _require_admin(request, config)
        body = await _body(request, UserAddRequest)
        try:
            from edgebox.fleet.relay import key_material

            key = key_material(body.ssh_public_key)
        except ValueError:
            raise APIError(400, "not an OpenSSH public key line", param="ssh_public_key",
                           code="invalid_key") from None  # fmt: skip
        token = await asyncio.to_thread(store.add_user, body.name, key, now())
        log.info("user %s added", log_field(body.name))
        await sync_relay()
        login = logins.encode(config.urls, config.fingerprint, token)
        answer = {"name": body.name, "ssh_public_key": key, "login": login,
                  "login_command": f"edgebox login {login}"}  # fmt: skip
        return JSONResponse(answer, status_code=201)

    async def list_users(request: Request) -> Response:
        _require_admin(request, config)
        return JSONResponse({"object": "list", "data": await asyncio.to_thread(store.users)})

    async def remove_user(request: Request) -> Response:
        _require_admin(request, config)
        name = request.path_params["user"]
        if not await asyncio.to_thread(store.remove_user, name, now()):
            raise APIError(404, f"no user {name!r}", param="user", code="user_not_found")
        log.info("user %s removed", log_field(name))
        await sync_relay()
        return JSONResponse({"name": name, "removed": True})

    async def get_node(request: Request) -> Response:
        _require_admin(request, config)
        key = request.path_params["node"]
        node = await asyncio.to_thread(store.node, key)
        if node is None:
            raise APIError(404, f"no node {key!r}", param="node", code="node_not_found")
        return JSONResponse(node)

    async def delete_node(request: Request) -> Response:
        _require_admin(request, config)
        key = request.path_params["node"]
        node = await asyncio.to_thread(store.revoke_node, key, now())
        if node is None:
            raise APIError(404, f"no node {key!r}", param="node", code="node_not_found")
        log.info("node %s revoked", node["id"])
        await sync_relay()
        await end_sessions([node["tunnel_port"]])  # live tunnels end now, not at next login
        return JSONResponse(node)

    async def create_token(request: Request) -> Response:
        _require_admin(request, config)
        body = await _body(request, TokenCreateRequest)
        token_id, secret, expires = await asyncio.to_thread(
            store.create_token, ttl=body.ttl_seconds, name=body.name, now=now()
        )
        line = tokens.encode(tokens.JoinToken(tuple(config.urls), config.fingerprint, token_id,
                                              secret))  # fmt: skip
        log.info("token %s created (expires in %.0f s)", token_id, body.ttl_seconds)
        return JSONResponse({"id": token_id, "name": body.name, "expires_at": expires,
                             "token": line, "join_command": tokens.join_command(line)},
                            status_code=201)  # fmt: skip

    async def list_tokens(request: Request) -> Response:
        _require_admin(request, config)
        data = await asyncio.to_thread(store.list_tokens, now())
        return JSONResponse({"object": "list", "data": data})

    async def revoke_token(request: Request) -> Response:
        _require_admin(request, config)
        token_id = request.path_params["token"]
        if not await asyncio.to_thread(store.revoke_token, token_id, now()):
            raise APIError(404, f"no unrevoked token {token_id!r}", param="token",
                           code="token_not_found")  # fmt: skip
        log.info("token %s revoked", log_field(token_id))
        return JSONResponse({"id": token_id, "revoked": True})

    async def events(request: Request) -> Response:
        _require_admin(request, config)
        return JSONResponse({"object": "list", "data": await asyncio.to_thread(store.events)})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sync_relay()
        sweeper = asyncio.create_task(_sweep_offline(store, config))
        yield
        sweeper.cancel()
        if on_shutdown is not None:
            await asyncio.to_thread(on_shutdown)

    routes = [
        Route("/health", health),
        Route("/v1/hub/join", join, methods=["POST"]),
        Route("/v1/hub/rejoin", rejoin, methods=["POST"]),
        Route("/v1/hub/heartbeat", heartbeat, methods=["POST"]),
        Route("/v1/hub/nodes", list_nodes),
        Route("/v1/hub/nodes/{node}", get_node),
        Route("/v1/hub/nodes/{node}", delete_node, methods=["DELETE"]),
        Route("/v1/hub/tokens", create_token, methods=["POST"]),
        Route("/v1/hub/tokens", list_tokens),
        Route("/v1/hub/tokens/{token}", revoke_token, methods=["DELETE"]),
        Route("/v1/hub/events", events),
        Route("/v1/hub/users", add_user, methods=["POST"]),
        Route("/v1/hub/users", list_users),
        Route("/v1/hub/users/{user}", remove_user, methods=["DELETE"]),
    ]
    handlers = {APIError: api_error_handler, HTTPException: http_error_handler,
                Exception: unhandled_error_handler}  # fmt: skip
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    return RateLimit(app, config.limits)


async def _sweep_offline(store: HubStore, config: HubConfig) -> None:
    """Mark nodes offline after MISSED_BEATS intervals of silence; checked twice an interval."""
    while True:
        await asyncio.sleep(config.heartbeat_interval / 2)
        t = config.clock()
        cutoff = t - MISSED_BEATS * config.heartbeat_interval
        try:
            gone = await asyncio.to_thread(store.mark_offline, older_than=cutoff, now=t)
        except Exception:  # a locked or full disk must not end the sweeper for good
            log.exception("offline sweep failed; retrying")
            continue
        for node_id in gone:
            log.warning("node %s offline: no heartbeat for %d intervals", node_id, MISSED_BEATS)
