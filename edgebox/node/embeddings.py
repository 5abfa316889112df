"""POST /v1/embeddings: strings in, OpenAI-shaped vectors out (float lists or base64 float32)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgebox.api.body import read_json
from edgebox.api.errors import APIError
from edgebox.node.admin import refuse_if_draining
from edgebox.node.openai_api import parse
from edgebox.node.recent import RequestRecord, usage_of
from edgebox.node.refusals import queue_full_error
from edgebox.node.state import NodeState
from edgebox.runtimes.base import BackendError, EmbeddingRuntime, QueueFullError

MAX_INPUTS = 2048  # OpenAI's limit per request
# Texts are truncated to the model's window after tokenizing; these bound that tokenizing.
MAX_INPUT_CHARS = 100_000  # per input
MAX_TOTAL_CHARS = 1_000_000  # all inputs of one request


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `user`, as OpenAI accepts it

    model: str
    input: Any  # checked by texts_from_input, for messages that say exactly what is wrong
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    keep_alive: float | str | None = None  # Ollama's: how long the model stays loaded after


def texts_from_input(value: Any) -> list[str]:
    """The request's `input` as a non-empty list of non-empty strings, else a 400 naming it."""
    if isinstance(value, str):
        if not value:
            raise _bad_input("input", "'input' is an empty string; send text to embed")
        _check_chars("input", value)
        return [value]
    if not isinstance(value, list):
        raise _bad_input("input", "'input' must be a string or a list of strings")
    if not value:
        raise _bad_input("input", "'input' is an empty list; send at least one string")
    if len(value) > MAX_INPUTS:
        raise _bad_input("input", f"'input' has {len(value)} items; at most {MAX_INPUTS}")
    for i, item in enumerate(value):
        if isinstance(item, int | list):
            raise _bad_input(
                "input",
                "token arrays are not supported here (their ids would come from another "
                "tokenizer); send the text as strings",
            )
        if not isinstance(item, str):
            raise _bad_input(f"input[{i}]", f"'input[{i}]' must be a string")
        if not item:
            raise _bad_input(f"input[{i}]", f"'input[{i}]' is an empty string; send text to embed")
        _check_chars(f"input[{i}]", item)
    total = sum(len(item) for item in value)
    if total > MAX_TOTAL_CHARS:
        raise _bad_input(
            "input", f"'input' holds {total} characters; at most {MAX_TOTAL_CHARS} per request"
        )
    return list(value)


def _check_chars(param: str, text: str) -> None:
    if len(text) > MAX_INPUT_CHARS:
        raise _bad_input(
            param, f"'{param}' is {len(text)} characters; at most {MAX_INPUT_CHARS} per input"
        )


def _bad_input(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def lookup_embedder(state: NodeState, model: str) -> EmbeddingRuntime:
    """The embedding runtime serving `model`; 400 for a chat model, 404 for an unknown one."""
    runtime = state.embedders.get(model)
    if runtime is not None:
        return runtime
    served = ", ".join(state.embedders) or "none"
    if model in state.runtimes:
        raise APIError(
            400,
            f"'{model}' is a chat model and does not make embeddings; "
            f"use an embedding model (served: {served})",
            param="model",
            code="model_not_supported",
        )
    raise APIError(
        404,
        f"the embedding model '{model}' is not served here (served: {served})",
        param="model",
        code="model_not_found",
    )


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A float list, or base64 of the little-endian float32 bytes, as OpenAI sends them."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return cast(list[float], vector.tolist())


def embedding_response(
    vectors: np.ndarray, model: str, prompt_tokens: int, encoding_format: str
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


async def create_embeddings(request: Request) -> Response:
    state: NodeState = request.app.state.node
    refuse_if_draining(state)
    body: EmbeddingRequest = parse(EmbeddingRequest, await read_json(request, state.max_body))
    record = usage_of(request)
    record.model = body.model
    async with state.residency.use(
        body.model, lookup_embedder, body.keep_alive, kind="embeddings"
    ) as runtime:
        return await _embed(runtime, body, record)


async def _embed(
    runtime: EmbeddingRuntime, body: EmbeddingRequest, record: RequestRecord
) -> Response:
    texts = texts_from_input(body.input)
    if body.dimensions is not None and body.dimensions != runtime.dimensions:
        raise APIError(
            400,
            f"'{body.model}' makes {runtime.dimensions}-dimensional vectors and was not trained "
            f"for shorter ones; omit 'dimensions' or set it to {runtime.dimensions}",
            param="dimensions",
            code="invalid_value",
        )
    try:
        result = await asyncio.wrap_future(runtime.embed(texts))
    except QueueFullError as exc:
        raise queue_full_error(exc) from exc
    except BackendError as exc:
        raise APIError(500, str(exc), type="server_error") from exc
    record.prompt_tokens = result.prompt_tokens
    return JSONResponse(
        embedding_response(result.vectors, body.model, result.prompt_tokens, body.encoding_format)
    )
