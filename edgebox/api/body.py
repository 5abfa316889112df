"""Request bodies: read with a size limit (413), decoded as JSON with a depth limit (400)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from edgebox.api.errors import APIError

# No OpenAI request nests deeper than a response schema does (body > response_format >
# json_schema > schema > its own levels); Python's decoder itself gives up near 1,000.
MAX_JSON_DEPTH = 64
DEFAULT_MAX_BODY = 4 * 1024 * 1024  # a full 128k-token context as text or token ids fits


async def read_json(request: Request, limit: int) -> Any:
    return decode_json(await read_body(request, limit))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(raw: bytes) -> Any:
    """The body as JSON, or a 400 `invalid_json` saying what is wrong with it."""
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise _too_deep() from exc
    except (ValueError, UnicodeDecodeError) as exc:  # ValueError: also ints past 4,300 digits
        raise APIError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc
    # Counting brackets is C-speed; only bodies with many of them are walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and json_depth(data) > MAX_JSON_DEPTH:
        raise _too_deep()
    return data


def json_depth(value: Any) -> int:
    """How deeply objects and arrays nest in a decoded JSON value (a scalar is 0), without
    recursion; stops counting a little past `MAX_JSON_DEPTH`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _too_deep() -> APIError:
    return APIError(
        400,
        f"the request body nests objects or arrays more than {MAX_JSON_DEPTH} levels deep",
        code="invalid_json",
    )


def _too_large(limit: int) -> APIError:
    # The rest of the body is never read, so the connection cannot carry another request:
    # say so, or a client reusing it meets a closed socket on its next call.
    return APIError(
        413,
        f"the request body is larger than {limit} bytes",
        code="request_too_large",
        headers={"Connection": "close"},
    )
