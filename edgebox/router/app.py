"""The router's ASGI app: the same OpenAI surface and error shapes as a node."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.api.anthropic import messages_aware_error_handler
from edgebox.api.auth import APIKeyMiddleware
from edgebox.api.body import DEFAULT_MAX_BODY, decode_json, read_body
from edgebox.api.envproxy import LanDirectTransport
from edgebox.api.errors import APIError
from edgebox.router import messages, responses
from edgebox.router.front import key_local_only
from edgebox.router.nodes import NodeStatus
from edgebox.router.service import Router

log = logging.getLogger("edgebox.router")


def _router(request: Request) -> Router:
    router: Router = request.app.state.router
    return router


async def health(request: Request) -> Response:
    router = _router(request)
    nodes = {name: _node_health(s) for name, s in router.poller.status.items()}
    up = any(s.healthy for s in router.routable().values()) or bool(router.config.cloud)
    learnt = router.observed.learnt()  # what splits measured; preferred to [disagg] settings
    pulls = {"started": router.pulls.started}  # pulls this router started on nodes
    body = {"status": "ok" if up else "degraded", "nodes": nodes, "split": learnt, "pulls": pulls}
    return JSONResponse(body)


def _node_health(node: NodeStatus) -> dict[str, Any]:
    """One node in /health: up or not, its models, and how far it is trusted (an unverified
    mDNS node is listed, with why, but gets no requests)."""
    shown: dict[str, Any] = {
        "healthy": node.healthy,
        "trust": node.address.trust,
        "models": {m: vars(load) for m, load in node.models.items()},
    }
    if node.address.note:
        shown["note"] = node.address.note
    return shown


def metrics(request: Request) -> Response:
    return Response(
        generate_latest(_router(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


def list_models(request: Request) -> Response:
    cards = list(_router(request).models().values())
    return JSONResponse({"object": "list", "data": cards})


def get_model(request: Request) -> Response:
    model = request.path_params["model"]
    card = _router(request).models().get(model)
    if card is None:
        raise APIError(
            404, f"the model '{model}' is not served", param="model", code="model_not_found"
        )
    return JSONResponse(card)


def check_body(data: Any) -> dict[str, Any]:
    """The router reads only `model`; the node validates the rest and its errors pass through."""
    if not isinstance(data, dict):
        raise APIError(
            400, "the request body must be a JSON object", param="body", code="invalid_value"
        )
    model = data.get("model")
    if model is None:
        raise APIError(400, "'model' is required", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise APIError(
            400, "invalid value for 'model': a model id string", param="model", code="invalid_value"
        )
    return data


async def forward(request: Request) -> Response:
    raw = await read_body(request, DEFAULT_MAX_BODY)
    data = check_body(decode_json(raw))
    return await _router(request).handle(
        request.url.path, data, request.headers, key_local_only=key_local_only(request), raw=raw
    )


async def start_router(router: Router) -> None:
    """Start the node sources that need it, poll once, then keep polling."""
    for source in router.poller.sources:
        if (start := getattr(source, "start", None)) is not None:
            await start()
    await router.poller.poll_once()
    router.poller.start()


async def stop_router(router: Router) -> None:
    await router.poller.stop()
    await router.relay.aclose()
    for source in router.poller.sources:
        if (stop := getattr(source, "stop", None)) is not None:
            await stop()
    await router.client.aclose()
    router.responses.close()


def client_keys(router: Router, api_key: str | None) -> tuple[list[str], set[int]]:
    """The keys clients may send (`api_key` first, then `[[keys]]` whose variable is set) and
    the indexes of the local-only ones."""
    keys = [api_key] if api_key else []
    local_only: set[int] = set()
    for entry in router.config.keys:
        value = entry.value()
        if value is None:
            log.warning("[[keys]] %s is not set in the environment; that key is off", entry.env)
            continue
        if entry.local_only:
            local_only.add(len(keys))
        keys.append(value)
    return keys, local_only


def agent_routes() -> list[Route]:
    """The agent APIs, translated to chat completions here (`responses.py`, `messages.py`)."""
    one = "/v1/responses/{response_id}"
    return [
        Route("/v1/responses", responses.create_response, methods=["POST"]),
        Route(one, responses.get_response, methods=["GET"]),
        Route(one, responses.delete_response, methods=["DELETE"]),
        Route(one + "/input_items", responses.list_input_items, methods=["GET"]),
        Route("/v1/messages", messages.create_message, methods=["POST"]),
        Route("/v1/messages/count_tokens", messages.count_tokens, methods=["POST"]),
        Route("/", messages.probe, methods=["GET", "HEAD"]),
    ]


def create_app(router: Router, *, api_key: str | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await start_router(router)
        try:
            yield
        finally:
            await stop_router(router)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", forward, methods=["POST"]),
        Route("/v1/completions", forward, methods=["POST"]),
        Route("/v1/embeddings", forward, methods=["POST"]),
        *agent_routes(),
    ]
    keys, local_only = client_keys(router, api_key)
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(APIKeyMiddleware, api_key=keys)] if keys else [],
        # Anthropic's error shape under /v1/messages, OpenAI's everywhere else
        exception_handlers={
            APIError: messages_aware_error_handler,
            HTTPException: messages_aware_error_handler,
            Exception: messages_aware_error_handler,
        },
    )
    app.state.router = router
    app.state.local_only_keys = local_only
    return app


def new_client() -> httpx.AsyncClient:
    """One pooled client for every node and upstream: the environment's proxy is used for
    public hosts only (a proxy never sees the nodes' keys and prompts: `api/envproxy.py`)."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
    return httpx.AsyncClient(
        transport=LanDirectTransport(limits),
        trust_env=False,
        timeout=httpx.Timeout(600.0, connect=3.0),
        # Relayed bytes go out as they came in (aiter_raw), so ask upstreams not to compress.
        headers={"accept-encoding": "identity"},
    )
