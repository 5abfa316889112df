"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with a fitting status."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> Response:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def param_path(loc: tuple[int | str, ...]) -> str:
    """('messages', 0, 'role') -> 'messages[0].role'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def from_validation_error(exc: ValidationError) -> APIError:
    err = exc.errors(include_url=False)[0]
    # Union members add their type name to the location; drop those for a readable param.
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p[:1].isupper() or "[" in p)))
    param = param_path(loc) or None
    kind = err["type"]
    if kind == "missing":
        message = f"'{param}' is required"
    elif kind == "extra_forbidden":
        message = f"'{param}' is not a recognised field"
    else:
        shown = err.get("input")
        shown = json.dumps(shown)[:80] if not isinstance(shown, dict | list) else None
        message = f"invalid value for '{param}': {err['msg']}" + (
            f" (got {shown})" if shown else ""
        )
    return APIError(
        400,
        message,
        param=param,
        code="invalid_value" if kind != "missing" else "missing_required_parameter",
    )


def as_api_error(request: Request, exc: Exception) -> APIError:
    """Any exception a handler meets as the error a client sees."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, HTTPException):
        status, detail = exc.status_code, exc.detail
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        return APIError(status, f"{request.method} {request.url.path}: {detail}", code=code)
    # Never echo the exception: it could hold paths or secrets. The log has it.
    return APIError(
        500, "the server hit an internal error; see the node's log", type="server_error"
    )


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def http_error_handler(request: Request, exc: Exception) -> Response:
    return as_api_error(request, exc).response()


async def unhandled_error_handler(request: Request, exc: Exception) -> Response:
    return as_api_error(request, exc).response()
