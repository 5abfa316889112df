"""Load and unload models on a running node: `GET /admin/models`, `POST /admin/models/load`,
`POST /admin/models/unload`, and `GET /admin/requests` (the recent-requests ring).

A load resolves and opens the model in a worker thread, as `edgebox serve --model` does at
start (same names: bundled, a local path, `ORG/REPO:FILE.gguf`; same runtime selection, same
`serve` options), while the event loop keeps serving the other models; the answer comes once
the model serves. An unload is refused with 409 `model_busy` while the model has running or
queued requests (drain the node, or wait, and retry): refusing keeps every request that was
accepted whole, where waiting would hold the operator's call open for an unknown time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgebox.api.body import read_json
from edgebox.api.errors import APIError
from edgebox.models import ModelNotAvailable, ResolvedModel
from edgebox.node.catalog import ModelCatalog
from edgebox.node.ondemand import resolve_spec
from edgebox.node.openai_api import parse
from edgebox.node.state import NodeState
from edgebox.runtimes.base import BackendError, EmbeddingRuntime, Runtime

log = logging.getLogger(__name__)
UNLOAD_RETRY_AFTER_S = 5
RuntimeChoice = Literal["auto", "llamacpp", "mlx", "onnx", "trtllm"]  # open.RUNTIME_CHOICES


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str  # as `serve --model`: a bundled name, a path, or ORG/REPO:FILE.gguf
    runtime: RuntimeChoice | None = None  # None: the node's own choice (`serve --runtime`)
    alias: str | None = None  # the id it is served as (default: as `serve` names it)


class UnloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str


def _state(request: Request) -> NodeState:
    state: NodeState = request.app.state.node
    return state


def loadable_models() -> list[dict[str, Any]]:
    """What this node could load by name (blocking: call it off the event loop)."""
    return [{"name": e.name, "kind": e.kind, "source": e.source} for e in ModelCatalog().scan()]


def _loaded(state: NodeState, alias: str, runtime: Runtime | EmbeddingRuntime) -> dict[str, Any]:
    stats = runtime.stats()
    return {
        "id": alias,
        "kind": "embeddings" if alias in state.embedders else "chat",
        "runtime": type(runtime).__name__,
        "fast_path": state.fast_paths.get(alias),
        "running": stats.running,
        "queued": stats.queued,
        "size_bytes": runtime.info.size_bytes,
    }


async def list_models(request: Request) -> Response:
    state = _state(request)
    served = state.all_models()
    loadable = [
        {"name": e.name, "kind": e.kind, "source": e.source, "loaded": e.name in served}
        for e in await state.catalog.refresh(force=True)
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": [_loaded(state, a, r) for a, r in served.items()],
            "loading": sorted(state.loading),
            "loadable": loadable,
        }
    )


def _already(state: NodeState, alias: str) -> None:
    if alias in state.all_models():
        raise APIError(
            409, f"'{alias}' is loaded already", param="model", code="model_already_loaded"
        )
    if alias in state.loading:
        raise APIError(409, f"'{alias}' is being loaded", param="model", code="model_loading")


MAX_SPEC = 1024
# What a bad spec or file can raise below the runtimes: a NUL in a path (ValueError), an
# unreadable file (OSError), a corrupt header asking for absurd sizes (MemoryError).
_FILE_ERRORS = (ValueError, OSError, MemoryError, RuntimeError)


def _check_spec(body: LoadRequest) -> None:
    if not body.model.strip():
        raise APIError(
            400, "'model' is empty; name a model to load", param="model", code="invalid_value"
        )
    if len(body.model) > MAX_SPEC or not body.model.isprintable():
        raise APIError(
            400,
            f"'model' must be at most {MAX_SPEC} printable characters",
            param="model",
            code="invalid_value",
        )
    if body.alias is not None and not body.alias.strip():
        raise APIError(
            400,
            "'alias' is empty; leave it out or name the id to serve as",
            param="alias",
            code="invalid_value",
        )


def _scrub(message: str, spec: str, resolved: ResolvedModel | None) -> str:
    """`message` naming the spec the client gave, never the resolved file or a symlink's
    target (where a model really lives on the node is not the client's business)."""
    if resolved is None:
        return message
    path = resolved.path
    for shown in (str(path), str(path.parent), path.name):
        if len(shown) > 3:
            message = message.replace(shown, spec)
    return message


def _not_loadable(spec: str, exc: BaseException, param: str = "model") -> APIError:
    return APIError(
        400,
        f"cannot load '{spec}': not a model file edgebox can read ({type(exc).__name__})",
        param=param,
        code="model_not_loadable",
    )


async def load_model(request: Request) -> Response:
    state = _state(request)
    body: LoadRequest = parse(LoadRequest, await read_json(request, state.max_body))
    _check_spec(body)
    _already(state, body.alias or body.model)
    try:
        resolved = await asyncio.to_thread(resolve_spec, body.model, body.alias)
    except ModelNotAvailable as exc:
        raise APIError(404, str(exc), param="model", code="model_not_found") from exc
    except _FILE_ERRORS as exc:
        raise _not_loadable(body.model, exc) from exc
    _already(state, resolved.alias)
    param = "runtime" if body.runtime else "model"
    try:
        runtime = await state.residency.load(body.model, body.alias, body.runtime)
    except BackendError as exc:
        raise APIError(
            400, _scrub(str(exc), body.model, resolved), param=param, code="model_not_loadable"
        ) from exc
    except (*_FILE_ERRORS, ModelNotAvailable) as exc:
        raise _not_loadable(body.model, exc) from exc
    log.info("loaded %s (%s)", resolved.alias, state.fast_paths.get(resolved.alias))
    return JSONResponse({"status": "loaded", **_loaded(state, resolved.alias, runtime)})


async def unload_model(request: Request) -> Response:
    state = _state(request)
    body: UnloadRequest = parse(UnloadRequest, await read_json(request, state.max_body))
    runtime = state.all_models().get(body.model)
    if runtime is None:
        served = ", ".join(state.all_models()) or "none"
        raise APIError(
            404,
            f"the model '{body.model}' is not served here (served: {served})",
            param="model",
            code="model_not_found",
        )
    stats = runtime.stats()
    if stats.running or stats.queued:
        raise APIError(
            409,
            f"'{body.model}' has {stats.running} running and {stats.queued} queued requests; "
            "drain the node or retry once they finish",
            param="model",
            code="model_busy",
            headers={"Retry-After": str(UNLOAD_RETRY_AFTER_S)},
        )
    if not await state.residency.unload(body.model, "admin"):
        raise APIError(
            409,
            f"'{body.model}' took a request meanwhile; retry once it finishes",
            param="model",
            code="model_busy",
            headers={"Retry-After": str(UNLOAD_RETRY_AFTER_S)},
        )
    return JSONResponse({"status": "unloaded", "id": body.model})


async def recent_requests(request: Request) -> Response:
    state = _state(request)
    limit_arg = request.query_params.get("limit")
    limit = None
    if limit_arg is not None:
        if not limit_arg.isdigit():
            raise APIError(
                400, "'limit' must be a whole number", param="limit", code="invalid_value"
            )
        limit = int(limit_arg)
    records = state.recent.newest_first(limit)
    return JSONResponse({"object": "list", "data": [r.to_json() for r in records]})
