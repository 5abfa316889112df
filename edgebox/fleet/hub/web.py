"""Request bodies for the hub's routes (at most 1 MiB of JSON, checked by a pydantic model)
and the error they raise: `APIError`, the node's OpenAI-shaped error, which the routes import
from here so the hub names its origin in one place."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from edgebox.api.errors import APIError, from_validation_error

__all__ = ["MAX_BODY", "APIError", "read_body"]

M = TypeVar("M", bound=BaseModel)
MAX_BODY = 1 << 20


async def read_body(request: Request, model: type[M]) -> M:
    """The body as `model`: 413 past MAX_BODY (chunked bodies are counted as they arrive),
    400 for bad JSON or a field the model refuses (the error names the field)."""
    too_large = APIError(  # the unread rest leaves the connection unusable: close it
        413,
        "request body is larger than 1 MiB",
        code="body_too_large",
        headers={"Connection": "close"},
    )
    declared = request.headers.get("content-length") or ""
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise APIError(400, "request body is not valid JSON", code="invalid_json") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
