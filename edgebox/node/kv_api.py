"""HTTP routes for KV export and import (format and store in `kv_transfer`).

Who may call them: these are node-to-node routes (a router's prefill/decode split). On a
node with an API key they need the key like every /v1/ route. On a node without one they
answer loopback clients only, as /admin/ does: an upload is memory held and native state
loaded for someone, so a keyless node on a LAN must not take it from any neighbour. A fleet
that splits across machines therefore gives its nodes keys (`serve --api-key`).
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response

from edgebox.api.auth import is_loopback
from edgebox.api.body import read_json
from edgebox.api.errors import APIError
from edgebox.api.protocol import ChatCompletionRequest, CompletionRequest
from edgebox.node.kv_transfer import (
    check_upload,
    prefill_export,
    read_snapshot,
    snapshot_response,
    upload_response,
)
from edgebox.node.offload import off_loop
from edgebox.node.openai_api import lookup, parse
from edgebox.node.prompts import (
    PreparedPrompt,
    chat_prompt,
    check_chat_size,
    check_prompt_fits,
    completion_prompts,
)
from edgebox.node.recent import usage_of
from edgebox.node.state import NodeState
from edgebox.runtimes.base import Runtime


def _client(request: Request) -> str:
    """The caller's address, refused (403) when a keyless node is reached from elsewhere."""
    host = request.client.host if request.client else ""
    # ScopedKeyMiddleware leaves the index of the key that matched; none: a keyless node.
    if "api_key_index" not in request.scope.get("state", {}) and not is_loopback(host):
        raise APIError(
            403,
            "this node has no API key, so its KV routes answer only on loopback; start it "
            "with --api-key (or EDGEBOX_API_KEY) to split prefill and decode across machines",
            code="kv_needs_api_key",
        )
    return host


def _kv_runtime(state: NodeState, model: str) -> Runtime:
    runtime = lookup(state, model)
    if not runtime.capabilities.kv_export:
        raise APIError(
            400,
            f"the model '{model}' runs on a runtime without KV export",
            param="model",
            code="kv_unsupported",
        )
    return runtime


async def prefill(request: Request) -> Response:
    """Prefill a chat or completion prompt and stream its KV (and the logits after it) back."""
    state: NodeState = request.app.state.node
    _client(request)
    data = await read_json(request, state.max_body)
    is_chat = isinstance(data, dict) and "messages" in data
    body = parse(ChatCompletionRequest if is_chat else CompletionRequest, data)
    record = usage_of(request)
    record.model = body.model
    runtime = _kv_runtime(state, body.model)
    prompt: PreparedPrompt
    # Rendering and tokenizing are bounded and run off the event loop, as for generation.
    if isinstance(body, ChatCompletionRequest):
        check_chat_size(runtime, body)
        prompt = await off_loop(chat_prompt, runtime, body)
    else:
        prompts = await off_loop(completion_prompts, runtime, body)
        if len(prompts) != 1:
            raise APIError(400, "KV prefill takes exactly one prompt", param="prompt")
        prompt = prompts[0]
    param = "messages" if is_chat else "prompt"
    check_prompt_fits(runtime, prompt, param)
    record.prompt_tokens = len(prompt.tokens)
    started = time.perf_counter()
    finish = await prefill_export(runtime, prompt.tokens, state.request_timeout)
    if finish.kv is None:
        status, kind = (504, "timeout") if finish.reason == "timeout" else (500, "kv_export_failed")
        raise APIError(status, finish.error or "KV export failed", type="server_error", code=kind)
    return snapshot_response(finish.kv, time.perf_counter() - started, finish.cached_tokens)


async def upload(request: Request) -> Response:
    """Receive a streamed snapshot for a later request's `X-Edgebox-KV` header; it is
    checked completely (bytes, then a one-token decode) before it is stored."""
    state: NodeState = request.app.state.node
    client = _client(request)
    model = request.path_params["model"]
    record = usage_of(request)
    record.model = model
    runtime = _kv_runtime(state, model)
    expected = await asyncio.to_thread(runtime.kv_fingerprint)
    assert expected is not None
    with state.kv_store.receiving(client) as reserve:
        kv = await read_snapshot(request.stream(), expected, state.kv_store.max_bytes, reserve)
        await check_upload(runtime, kv, state.request_timeout)
        key = state.kv_store.put(model, kv, client=client)
    record.prompt_tokens = len(kv.tokens)
    return upload_response(key, model, kv, state.kv_store.ttl_s)
