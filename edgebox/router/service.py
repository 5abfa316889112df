"""The router's request path: place, maybe split, then try targets in order until one answers."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections import OrderedDict
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.responses import Response

from edgebox.api.errors import APIError
from edgebox.router.cloud import (
    CloudTarget,
    SpendLedger,
    Target,
    cost_usd,
    plan_targets,
    predicted_wait_s,
)
from edgebox.router.config import RouterConfig
from edgebox.router.disagg import Handoff, SplitFailed, hand_off, should_split
from edgebox.router.forward import Outgoing, Relay, TargetFailed, send
from edgebox.router.metrics import RouterMetrics
from edgebox.router.nodes import NodePoller, NodeSource, NodeStatus, with_inflight
from edgebox.router.placement import (
    Candidate,
    PlacementContext,
    PlacementPolicy,
    RouteRequest,
    estimate_prompt_tokens,
    place,
    prefix_keys,
    requested_max_tokens,
)
from edgebox.router.speed import SpeedBook
from edgebox.router.tokens import RecentBlocks, Tokenizers, prefix_note

LOCAL_ONLY_HEADER = "x-edgebox-local-only"
ROUTED_HEADER = "x-edgebox-routed"  # on requests the router sends to nodes (see embed.py)
_AFFINITY_ENTRIES = 4096
_SPLIT_PATHS = ("/v1/chat/completions", "/v1/completions")
_TIMEOUT = httpx.Timeout(600.0, connect=3.0)


@dataclass
class Split:
    decode_node: str
    reason: str
    handoff: Handoff | None = None


class Router:
    def __init__(
        self,
        config: RouterConfig,
        sources: list[NodeSource],
        client: httpx.AsyncClient,
        ledger: SpendLedger,
        *,
        node_api_key: str | None = None,
    ) -> None:
        self.config = config
        self.client = client  # control plane: polling, KV hand-off
        self.relay = Relay(read_timeout_s=_TIMEOUT.read or 600.0)  # the request hot path
        self.ledger = ledger
        self.poller = NodePoller(
            sources, client, config.poll_interval_s, trust_lan=config.trust_mdns
        )
        self.policy = PlacementPolicy.from_weights(config.weights)
        self.affinity: OrderedDict[str, str] = OrderedDict()
        self.tokenizers = Tokenizers(config.tokenizers)
        self.recent_blocks = RecentBlocks(ttl_s=max(10.0, 2 * config.poll_interval_s))
        self._loading = False
        self.poller.after_poll.append(self._load_tokenizers)
        self.prefill_rates: dict[str, float] = {}  # tokens/s, measured from splits
        # measured in splits: (prefill node, decode node) → bytes/s; model → KV bytes/token
        self.link_rates: dict[tuple[str, str], float] = {}
        self.kv_bytes_per_token: dict[str, float] = {}
        self.inflight: dict[str, int] = {}  # requests this router has open on each node
        self.speeds = SpeedBook()  # per-stream decode rates, for placement's speed term
        self.metrics = RouterMetrics(ledger.spent_today)
        # The router's own fleet credential; a client's key is never passed on to a node.
        node_key = config.node_api_key_env
        self._fleet_key = node_api_key or (_env(node_key) if node_key else None)

    def _node_headers(self, node: NodeStatus) -> dict[str, str]:
        """The key a node gets: its own (`[[nodes]] key_env`), else the fleet key; none for a
        node trusted only by `--trust-lan` (it proved nothing)."""
        if node.address.trust == "lan":
            return {}
        key = node.address.key or self._fleet_key
        return {"authorization": f"Bearer {key}"} if key else {}

    def routable(self) -> dict[str, NodeStatus]:
        """The nodes requests may go to: not those learned from mDNS that proved nothing."""
        return {n: s for n, s in self.poller.status.items() if s.routable}

    # -- models ---------------------------------------------------------------------------------

    def models(self) -> dict[str, dict[str, Any]]:
        """Every model a request can name: served by an up node, or mapped to a cloud."""
        cards: dict[str, dict[str, Any]] = {}
        for node in self.routable().values():
            if not node.healthy:
                continue
            for model in node.models:
                card = cards.setdefault(model, _card(model, "edgebox"))
                card["meta"]["nodes"].append(node.name)
        for upstream in self.config.cloud:
            for model in upstream.models:
                card = cards.setdefault(model, _card(model, "cloud:" + upstream.name))
                card["meta"]["cloud"].append(upstream.name)
        return cards

    def _known(self, model: str) -> bool:
        in_cloud = any(model in u.models for u in self.config.cloud)
        return in_cloud or any(model in n.models for n in self.routable().values())

    def _unverified_note(self, model: str) -> str:
        """Why a model served only by unverified mDNS nodes is not offered, and what to do."""
        names = sorted(n for n, s in self.poller.status.items()
                       if not s.routable and model in s.models)  # fmt: skip
        if not names:
            return ""
        return (
            f"; unverified nodes seen on mDNS serve it ({', '.join(names)}): pin their keys "
            "(trusted_node_keys in the router config, or --trust-node) or, on a LAN you "
            "trust, start the router with --trust-lan"
        )

    # -- routing --------------------------------------------------------------------------------

    async def handle(
        self,
        path: str,
        body: dict[str, Any],
        headers: Mapping[str, str],
        *,
        key_local_only: bool = False,
        raw: bytes | None = None,
    ) -> Response:
        """Route one request. `raw` is the client's encoded body, sent to nodes unchanged."""
        model = body["model"]
        if not self._known(model):
            raise APIError(
                404,
                f"the model '{model}' is not served by any node or cloud upstream "
                f"(GET /v1/models lists them){self._unverified_note(model)}",
                param="model",
                code="model_not_found",
            )
        now = time.monotonic()
        for polled in self.poller.status.values():
            self.speeds.observe(polled)
        nodes = self.speeds.apply(
            {
                n.name: with_inflight(n, self.inflight.get(n.name, 0))
                for n in self.routable().values()
            },
            now,
        )
        prompt = await self.tokenizers.encode_async(body)
        if prompt is not None:
            req = RouteRequest(
                model, (), prompt.tokens, requested_max_tokens(body), blocks=prompt.blocks
            )
            sha = self.tokenizers.sha256(model)
            ctx = PlacementContext(
                now, self.affinity, self.recent_blocks.held(model, sha, nodes, now)
            )
        else:  # not tokenizable here: message-level keys, size estimated
            keys = prefix_keys(body, self.config.affinity_messages)
            req = RouteRequest(
                model, keys, estimate_prompt_tokens(body), requested_max_tokens(body)
            )
            ctx = PlacementContext(now, self.affinity)
        local, rejected = place(req, list(nodes.values()), self.policy, ctx)
        serving = {n: s.models[model] for n, s in nodes.items() if model in s.models}
        queued = {n: load.queued for n, load in serving.items()}
        waits = {n: predicted_wait_s(load) for n, load in serving.items()}
        local_only = key_local_only or (
            headers.get(LOCAL_ONLY_HEADER, "").lower() in ("1", "true", "yes")
        )
        too_small = any(r == "context-too-small" for r in rejected.values())
        plan, no_cloud = plan_targets(
            model, local, queued, self.config.cloud,
            local_only=local_only, over_cap=self.ledger.over_cap(), waits=waits,
            no_local_reason="context" if too_small else "no-local-node",
        )  # fmt: skip
        if not plan:
            raise self._nothing_up(model, rejected, no_cloud)
        split = await self._maybe_split(path, body, req, plan, nodes)
        encoded = raw if raw is not None else json.dumps(body).encode()
        held = ctx.blocks
        return await self._attempt(path, body, encoded, plan, nodes, split, req, held)

    def _nothing_up(self, model: str, rejected: dict[str, str], no_cloud: str | None) -> APIError:
        why = ", ".join(f"{n}: {r}" for n, r in rejected.items()) or "no nodes known"
        if no_cloud == "spend-cap":
            return APIError(
                429,
                f"no node serving '{model}' is up ({why}) and the daily cloud spend cap "
                f"(${self.ledger.cap_usd:.2f}) is reached; retry later or raise max_usd_per_day",
                type="rate_limit_error",
                code="spend_cap_reached",
                headers={"Retry-After": "60"},
            )
        extra = "; the request is local-only" if no_cloud == "local-only" else ""
        return APIError(
            503,
            f"no node serving '{model}' is up ({why}){extra}",
            type="server_error",
            code="no_node_available",
            headers={"Retry-After": "5"},
        )

    async def _maybe_split(
        self,
        path: str,
        body: dict[str, Any],
        req: RouteRequest,
        plan: list[tuple[Target, str]],
        nodes: dict[str, NodeStatus],
    ) -> Split | None:
        first = plan[0][0]
        if path not in _SPLIT_PATHS or not isinstance(first, Candidate):
            return None
        others = [t for t, _ in plan[1:] if isinstance(t, Candidate)]
        if not others:
            return None
        helper = max(others, key=lambda c: self._prefill_rate(nodes[c.node], req.model) or 0.0)
        decide, reason = should_split(
            self.config.disagg,
            req.prompt_tokens,
            self._prefill_rate(nodes[first.node], req.model),
            self._prefill_rate(nodes[helper.node], req.model),
            link_bytes_per_s=self.link_rates.get((helper.node, first.node)),
            kv_bytes_per_token=self.kv_bytes_per_token.get(req.model),
        )
        if not decide:
            return Split(first.node, reason) if reason != "split-off" else None
        headers = self._node_headers(nodes[helper.node])
        if headers != self._node_headers(nodes[first.node]):  # one key goes to both nodes
            return Split(first.node, f"{reason},failed-keys-differ")
        try:
            handoff = await hand_off(
                self.client, nodes[helper.node].address.url, nodes[first.node].address.url,
                req.model, body, headers,
            )  # fmt: skip
        except SplitFailed as exc:
            self.metrics.splits.labels("failed").inc()
            return Split(first.node, f"{reason},failed-{exc}")
        self.metrics.splits.labels("ok").inc()
        self._learn(handoff, helper.node, first.node, req.model)
        return Split(first.node, f"{reason},prefill@{helper.node}", handoff)

    async def _load_tokenizers(self) -> None:
        """After a poll: load the vocabulary of each newly seen model, off the event loop."""
        models = {m for n in self.poller.status.values() for m in n.models}
        if self._loading or not self.tokenizers.pending(models):
            return
        self._loading = True
        try:
            await asyncio.to_thread(self.tokenizers.load, models)
        finally:
            self._loading = False

    def _learn(self, handoff: Handoff, prefill: str, decode: str, model: str) -> None:
        """Fold one split's measurements into the cost model's inputs (exponential averages)."""
        if handoff.prefill_s > 0:
            _average(self.prefill_rates, prefill, handoff.tokens / handoff.prefill_s)
        if handoff.transfer_s > 0 and handoff.kv_bytes > 0:
            _average(self.link_rates, (prefill, decode), handoff.kv_bytes / handoff.transfer_s)
        if handoff.tokens > 0:
            _average(self.kv_bytes_per_token, model, handoff.kv_bytes / handoff.tokens)

    def _remember(self, keys: tuple[str, ...], node: str) -> None:
        for key in keys:
            self.affinity[key] = node
            self.affinity.move_to_end(key)
        while len(self.affinity) > _AFFINITY_ENTRIES:
            self.affinity.popitem(last=False)

    def _finished(self, name: str) -> None:
        self.inflight[name] = max(0, self.inflight.get(name, 0) - 1)

    def _prefill_rate(self, node: NodeStatus, model: str) -> float | None:
        """Prompt tokens/s: what the node measures itself (its /metrics; the same yardstick on
        every node), else what this router measured in splits, else the configured seed."""
        load = node.models.get(model)
        reported = load.prefill_tokens_per_s if load is not None else 0.0
        return reported or self.prefill_rates.get(node.name) or node.address.prefill_tokens_per_s

    async def _attempt(
        self,
        path: str,
        body: dict[str, Any],
        encoded: bytes,
        plan: list[tuple[Target, str]],
        nodes: dict[str, NodeStatus],
        split: Split | None,
        req: RouteRequest,
        held: Mapping[str, Sequence[Container[str]]],
    ) -> Response:
        failures: list[str] = []
        last: Response | None = None
        for target, reason in plan[: self.config.max_attempts]:
            route = f"{_target_name(target)};reason={reason}"
            if failures:
                route += ";failover=" + ",".join(failures)
            if split and isinstance(target, Candidate) and target.node == split.decode_node:
                route += f";split={split.reason}"
            if isinstance(target, Candidate):  # token blocks matched there, or message keys
                route += prefix_note(req.blocks, held.get(target.node, ()))
            try:
                out, on_usage = self._outgoing(path, body, encoded, target, nodes, split)
                name = _target_name(target)
                self.inflight[name] = self.inflight.get(name, 0) + 1
                response = await send(
                    self.relay, out, route, on_usage, functools.partial(self._finished, name)
                )
            except TargetFailed as exc:
                failures.append(f"{_target_name(target)}:{exc.reason}")
                self.metrics.failovers.labels(_target_name(target)).inc()
                if isinstance(target, Candidate) and exc.reason != "http-429":
                    self.poller.mark_failed(target.node)
                last = exc.response or last
                continue
            self.metrics.routed.labels(_target_name(target), str(response.status_code)).inc()
            if isinstance(target, Candidate) and response.status_code < 400:
                self._remember(req.prefix_keys, target.node)
                self.recent_blocks.sent(req.blocks, target.node, time.monotonic())
            return response
        if last is not None:
            return last
        raise APIError(
            502,
            f"every target for '{req.model}' failed before answering: {', '.join(failures)}",
            type="server_error",
            code="upstream_failed",
        )

    def _outgoing(
        self,
        path: str,
        body: dict[str, Any],
        encoded: bytes,
        target: Target,
        nodes: dict[str, NodeStatus],
        split: Split | None,
    ) -> tuple[Outgoing, Any]:
        if isinstance(target, Candidate):
            headers = {**self._node_headers(nodes[target.node]), ROUTED_HEADER: "1"}
            if split and split.handoff and target.node == split.decode_node:
                headers.update(split.handoff.headers())
            return Outgoing(nodes[target.node].address.url + path, encoded, headers), None
        return self._cloud_outgoing(path, body, target)

    def _cloud_outgoing(
        self, path: str, body: dict[str, Any], target: CloudTarget
    ) -> tuple[Outgoing, Any]:
        upstream = target.upstream
        key = upstream.api_key()
        if upstream.api_key_env and not key:
            raise TargetFailed(f"key-env-{upstream.api_key_env}-unset")
        cloud_body = {**body, "model": target.model}
        if body.get("stream"):  # usage is what the spend cap counts
            cloud_body["stream_options"] = {
                **(body.get("stream_options") or {}),
                "include_usage": True,
            }
        headers = {"authorization": f"Bearer {key}"} if key else {}

        def on_usage(usage: Mapping[str, Any]) -> None:
            usd = cost_usd(upstream, target.model, usage)
            self.ledger.add(target.model, usd)
            self.metrics.cloud_usd.labels(upstream.name).inc(usd)

        url = upstream.base_url.rstrip("/") + path.removeprefix("/v1")
        return Outgoing(url, json.dumps(cloud_body).encode(), headers), on_usage


def _average(table: dict[Any, float], key: Any, sample: float) -> None:
    old = table.get(key)
    table[key] = sample if old is None else 0.7 * old + 0.3 * sample


def _target_name(target: Target) -> str:
    return target.node if isinstance(target, Candidate) else target.name


def _card(model: str, owner: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"nodes": [], "cloud": []}
    return {"id": model, "object": "model", "created": 0, "owned_by": owner, "meta": meta}


def _env(name: str) -> str | None:
    return os.environ.get(name) or None
