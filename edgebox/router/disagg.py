"""Prefill/decode split: the cost model (pure) and the KV hand-off between two nodes.

Time to first token, all on the decode node vs split (prefill elsewhere, KV over the link):

    local_s = prompt_tokens / prefill_rate(decode node)
    split_s = prompt_tokens / prefill_rate(prefill node)
            + (prompt_tokens · kv_bytes_per_token + logits_bytes) / link_bytes_per_s
            + handoff_overhead_s                    (two extra HTTP round trips, the import)

`logits_bytes` are the float32 logits after the prompt that travel with its KV (4 bytes per
vocabulary entry, whatever the prompt's length), as measured in an earlier split.
`auto` splits when the prompt is at least `min_prompt_tokens` and split_s < local_s;
`always` splits whenever a second node serves the model; `off` never splits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from edgebox.api.kv import KV_HEADER
from edgebox.router.config import Disagg

HANDOFF_OVERHEAD_S = 0.02


@dataclass(frozen=True)
class SplitEstimate:
    local_s: float
    split_s: float
    kv_bytes: int  # what crosses the link: the KV and the logits after it


def estimate_split(
    prompt_tokens: int,
    local_prefill_tps: float,
    remote_prefill_tps: float,
    kv_bytes_per_token: int,
    link_bytes_per_s: float,
    overhead_s: float = HANDOFF_OVERHEAD_S,
    logits_bytes: int = 0,
) -> SplitEstimate:
    kv_bytes = prompt_tokens * kv_bytes_per_token + logits_bytes
    return SplitEstimate(
        local_s=prompt_tokens / local_prefill_tps,
        split_s=prompt_tokens / remote_prefill_tps + kv_bytes / link_bytes_per_s + overhead_s,
        kv_bytes=kv_bytes,
    )


def should_split(
    settings: Disagg,
    prompt_tokens: int,
    local_prefill_tps: float | None,
    remote_prefill_tps: float | None,
    *,
    link_bytes_per_s: float | None = None,
    kv_bytes_per_token: float | None = None,
    logits_bytes: float | None = None,
) -> tuple[bool, str]:
    """Whether to split, and the reason (for the route header). The link rate and KV bytes
    per token are the measured ones when a split between the pair has run, else `settings`;
    the logits' bytes are known once a split of the model has run (until then, none)."""
    if settings.mode == "off":
        return False, "split-off"
    if settings.mode == "always":
        return True, "split-always"
    if prompt_tokens < settings.min_prompt_tokens:
        return False, "prompt-short"
    if not local_prefill_tps or not remote_prefill_tps:
        return False, "prefill-rates-unknown"
    est = estimate_split(
        prompt_tokens,
        local_prefill_tps,
        remote_prefill_tps,
        round(kv_bytes_per_token or settings.kv_bytes_per_token),
        link_bytes_per_s or settings.link_mbps * 1e6 / 8,
        logits_bytes=round(logits_bytes or 0),
    )
    if est.split_s < est.local_s:
        return True, f"split-saves-{(est.local_s - est.split_s) * 1000:.0f}ms"
    return False, "split-slower"


class SplitFailed(Exception):
    pass


@dataclass(frozen=True)
class Handoff:
    kv_id: str
    tokens: int
    kv_bytes: int
    prefill_s: float
    transfer_s: float = 0.0  # KV streamed out of the prefill node and imported by the decoder
    logits_bytes: int = 0  # sent after the KV: the logits after the prompt

    def headers(self) -> dict[str, str]:
        return {KV_HEADER: self.kv_id}


async def hand_off(
    client: httpx.AsyncClient,
    prefill_url: str,
    decode_url: str,
    model: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> Handoff:
    """Prefill on one node and stream its KV snapshot straight into the other, chunk by chunk."""
    prefill_body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    try:
        async with client.stream(
            "POST", prefill_url + "/v1/edgebox/kv/prefill", json=prefill_body, headers=headers
        ) as exported:
            if exported.status_code != 200:
                await exported.aread()
                raise SplitFailed(f"prefill-{exported.status_code}-{_code(exported)}")
            started = time.perf_counter()  # the prefill is done once the snapshot's head arrives
            uploaded = await client.put(
                decode_url + f"/v1/edgebox/kv/{model}",
                content=exported.aiter_raw(),
                headers=headers,
            )
            prefill_s = float(exported.headers.get("x-edgebox-prefill-ms", 0)) / 1000
            transfer_s = time.perf_counter() - started
    except httpx.HTTPError as exc:
        raise SplitFailed(f"transfer-{type(exc).__name__}") from None
    if uploaded.status_code != 201:
        raise SplitFailed(f"import-{uploaded.status_code}-{_code(uploaded)}")
    handle = uploaded.json()
    logits = int(handle.get("logits_bytes", 0))
    return Handoff(
        handle["id"], int(handle["tokens"]), int(handle["bytes"]), prefill_s, transfer_s, logits
    )


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "error"
