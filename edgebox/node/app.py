"""The node's ASGI app: OpenAI and Anthropic routes, health, metrics, identity, errors, keys."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.api.anthropic import messages_aware_error_handler
from edgebox.api.auth import NodeKeys, ScopedKeyMiddleware
from edgebox.api.errors import APIError
from edgebox.api.identity import IDENTITY_PATH
from edgebox.node import (
    admin,
    blobs_api,
    embeddings,
    identity_api,
    kv_api,
    messages_api,
    model_admin,
    openai_api,
    pull_admin,
    responses_api,
)
from edgebox.node.identity_api import NodeSigner
from edgebox.node.metrics import RequestCounterMiddleware
from edgebox.node.recent import RecentRequestsMiddleware
from edgebox.node.state import NodeState


def root(request: Request) -> Response:
    """What answers `GET /` and `HEAD /`: Claude Code probes the base URL before its first turn."""
    return JSONResponse({"object": "edgebox.node", "status": "ok", "api": "/v1"})


async def health(request: Request) -> Response:
    state: NodeState = request.app.state.node
    return JSONResponse((await state.full_health()).to_json())


def metrics(request: Request) -> Response:
    state: NodeState = request.app.state.node
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(
    state: NodeState,
    *,
    api_key: str | None = None,
    keys: NodeKeys | None = None,
    signer: NodeSigner | None = None,
) -> Starlette:
    """An app serving `state`'s runtimes; closing the runtimes stays with the caller.

    `keys` (or just `api_key`, the inference key) guard `/v1/` and `/admin/` by scope (see
    `api.auth`); `signer` answers `GET /edgebox/identity` challenges."""
    keys = keys or NodeKeys(api_key=api_key)
    routes = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route(IDENTITY_PATH, identity_api.identity, methods=["GET"]),
        Route("/v1/models", openai_api.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", openai_api.get_model, methods=["GET"]),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai_api.completions, methods=["POST"]),
        Route("/v1/messages", messages_api.messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", messages_api.count_tokens, methods=["POST"]),
        Route("/v1/embeddings", embeddings.create_embeddings, methods=["POST"]),
        Route("/v1/responses", responses_api.create_response, methods=["POST"]),
        Route("/v1/responses/{response_id}", responses_api.get_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses_api.delete_response, methods=["DELETE"]),
        Route(
            "/v1/responses/{response_id}/input_items",
            responses_api.list_input_items,
            methods=["GET"],
        ),
        Route("/v1/edgebox/kv/prefill", kv_api.prefill, methods=["POST"]),
        Route("/v1/edgebox/kv/{model:path}", kv_api.upload, methods=["PUT"]),
        Route("/v1/blobs/{digest}", blobs_api.blob, methods=["GET", "HEAD"]),
        Route("/v1/blobs/{digest}/chunks", blobs_api.chunks, methods=["GET"]),
        Route("/v1/store/models/{name:path}", blobs_api.manifest, methods=["GET"]),
        Route("/admin/models/pull", pull_admin.start_pull, methods=["POST"]),
        Route("/admin/models/pull", pull_admin.list_pulls, methods=["GET"]),
        Route("/admin/models/pull/{job}", pull_admin.pull_status, methods=["GET"]),
        Route("/admin/drain", admin.drain, methods=["POST"]),
        Route("/admin/undrain", admin.undrain, methods=["POST"]),
        Route("/admin/models", model_admin.list_models, methods=["GET"]),
        Route("/admin/models/load", model_admin.load_model, methods=["POST"]),
        Route("/admin/models/unload", model_admin.unload_model, methods=["POST"]),
        Route("/admin/requests", model_admin.recent_requests, methods=["GET"]),
    ]
    middleware = [
        Middleware(RequestCounterMiddleware, metrics=state.metrics),
        Middleware(RecentRequestsMiddleware, recent=state.recent),
        Middleware(ScopedKeyMiddleware, keys=keys),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            APIError: messages_aware_error_handler,
            HTTPException: messages_aware_error_handler,
            Exception: messages_aware_error_handler,
        },
    )
    app.state.node = state
    app.state.signer = signer
    return app
