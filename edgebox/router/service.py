"""The router's request path: observe, plan (a pure function, `plan.py`), then execute the
plan: the split's KV hand-off, then the targets in order until one answers."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.responses import Response

from edgebox.api.errors import APIError
from edgebox.api.response_store import ResponseStore
from edgebox.router.cloud import CloudTarget, SpendLedger, Target, cost_usd
from edgebox.router.config import RouterConfig
from edgebox.router.disagg import SplitFailed, hand_off
from edgebox.router.fetch import pullable
from edgebox.router.forward import Outgoing, Relay, TargetFailed, send
from edgebox.router.metrics import RouterMetrics
from edgebox.router.nodes import NodePoller, NodeSource, NodeStatus
from edgebox.router.observations import Observations
from edgebox.router.placement import (
    Candidate,
    PlacementContext,
    PlacementPolicy,
    RouteRequest,
    conversation_keys,
    estimate_prompt_tokens,
    prefix_keys,
    requested_max_tokens,
)
from edgebox.router.plan import Attempt, Observed, RoutePlan, Split, plan_route, target_name
from edgebox.router.pulls import Pulls, fetch_first
from edgebox.router.tokens import Tokenizers

LOCAL_ONLY_HEADER = "x-edgebox-local-only"
ROUTED_HEADER = "x-edgebox-routed"  # on requests the router sends to nodes (see embed.py)
RESPONSES_FILE = "router_responses.sqlite3"  # beside the spend ledger, in the router's home
_TIMEOUT = httpx.Timeout(600.0, connect=3.0)


class Router:
    def __init__(
        self,
        config: RouterConfig,
        sources: list[NodeSource],
        client: httpx.AsyncClient,
        ledger: SpendLedger,
        *,
        node_api_key: str | None = None,
        responses: ResponseStore | None = None,
        node_pull_key: str | None = None,
    ) -> None:
        self.config = config
        # Stored Responses conversations: here, so they outlive the node that served them.
        self.responses = responses or ResponseStore(ledger.path.parent / RESPONSES_FILE)
        self.client = client  # control plane: polling, KV hand-off
        self.relay = Relay(read_timeout_s=_TIMEOUT.read or 600.0)  # the request hot path
        self.ledger = ledger
        self.poller = NodePoller(
            sources, client, config.poll_interval_s, trust_lan=config.trust_mdns
        )
        self.policy = PlacementPolicy.from_weights(config.weights)
        self.tokenizers = Tokenizers(config.tokenizers)
        # speeds, open requests, affinity, recent blocks and what splits measured
        self.observed = Observations(recent_blocks_ttl_s=max(10.0, 2 * config.poll_interval_s))
        self._loading = False
        self.poller.after_poll.append(self._load_tokenizers)
        self.metrics = RouterMetrics(ledger.spent_today)
        # The router's own fleet credential; a client's key is never passed on to a node.
        node_key = config.node_api_key_env
        self._fleet_key = node_api_key or (_env(node_key) if node_key else None)
        pull_env = config.node_pull_key_env
        self._pull_key = node_pull_key or (_env(pull_env) if pull_env else None)
        self.pulls = Pulls(client, config.loading.pull_timeout_s)  # models brought to nodes

    def _node_headers(self, node: NodeStatus) -> dict[str, str]:
        """The key a node gets: its own (`[[nodes]] key_env`), else the fleet key; none for a
        node trusted only by `--trust-lan` (it proved nothing)."""
        if node.address.trust == "lan":
            return {}
        key = node.address.key or self._fleet_key
        return {"authorization": f"Bearer {key}"} if key else {}

    def _pull_headers(self, node: NodeStatus) -> dict[str, str]:
        """The key a node's `/admin/models/pull` gets: its pull key (`serve --pull-key`, or
        its admin key), else the inference key (a node without admin or pull key answers
        /admin/ on loopback only, with that key). Never more than pulls need."""
        if node.address.trust == "lan":
            return {}
        key = node.address.pull_key or self._pull_key
        return {"authorization": f"Bearer {key}"} if key else self._node_headers(node)

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
                card["status"] = "loaded"
            for model in node.available:
                card = cards.setdefault(model, _card(model, "edgebox"))
                card["meta"].setdefault("on_disk", []).append(node.name)
                card.setdefault("status", "available")
        for upstream in self.config.cloud:
            for model in upstream.models:
                card = cards.setdefault(model, _card(model, "cloud:" + upstream.name))
                card["meta"]["cloud"].append(upstream.name)
        return cards

    def _known(self, model: str) -> bool:
        in_cloud = any(model in u.models for u in self.config.cloud)
        nodes = self.routable().values()
        return in_cloud or any(model in n.models or model in n.available for n in nodes)

    def _model_list(self, most: int = 40) -> str:
        """The models a request can name, for a 404 (GET /v1/models has them all)."""
        names = sorted(self.models())
        if not names:
            return "none"
        more = f", and {len(names) - most} more (GET /v1/models)" if len(names) > most else ""
        return ", ".join(names[:most]) + more

    def _unverified_note(self, model: str) -> str:
        """Why a model served only by unverified mDNS nodes is not offered, and what to do."""
        status = self.poller.status
        names = sorted(n for n, s in status.items() if not s.routable and model in s.models)
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
        conversation: tuple[str, ...] = (),
    ) -> Response:
        """Route one request: observe, plan (pure), execute. `raw` is the client's encoded
        body, sent to nodes unchanged; `conversation`, affinity keys naming the conversation
        beyond those the body names (`placement.conversation_keys`)."""
        self._check_known(body["model"])
        asked = headers.get(LOCAL_ONLY_HEADER, "").lower() in ("1", "true", "yes")
        talk = (*conversation, *conversation_keys(body))
        seen = await self._observe(body, talk, local_only=key_local_only or asked)
        plan = plan_route(path, seen, self.config, self.policy)
        if not plan.targets:
            raise self._nothing_up(plan)
        if plan.fetch is not None:
            plan = await self._fetch(plan)
        split = await self._split(plan, body)
        encoded = raw if raw is not None else json.dumps(body).encode()
        return await self._attempt(Attempt(plan, body, encoded, split))

    def _check_known(self, model: str) -> None:
        if self._known(model):
            return
        pull = pullable(model)
        if pull and self.config.loading.internet:
            return  # a node downloads it (`fetch.place_loading`)
        how = (
            "; it is a Hugging Face spec: start the router with --allow-internet-pull (or "
            "[loading] internet = true) to let a node download it, or put it on nodes with "
            f"`edgebox deploy {model} --to NODE`"
            if pull
            else ""
        )
        raise APIError(
            404,
            f"the model '{model}' is not on any node or cloud upstream "
            f"(models: {self._model_list()}){self._unverified_note(model)}{how}",
            param="model",
            code="model_not_found",
        )

    async def _fetch(self, plan: RoutePlan) -> RoutePlan:
        """Bring the model to the plan's first node before the request goes there."""
        assert plan.fetch is not None
        headers = self._pull_headers(plan.nodes[plan.fetch.node])
        return await fetch_first(self.pulls, plan, headers)

    async def _observe(
        self, body: dict[str, Any], conversation: tuple[str, ...], *, local_only: bool
    ) -> Observed:
        """The values a route decision reads: node states as placement should see them, the
        request's size and prefix (token blocks where it can be tokenized here), and what
        splits measured."""
        model = body["model"]
        now = time.monotonic()
        seen = self.observed
        nodes = seen.nodes(self.poller.status.values(), self.routable().values(), now)
        nodes = self.pulls.fold(nodes, now)  # what pulls brought since the last poll
        links = dict(seen.link_rates)
        prompt = await self.tokenizers.encode_async(body)
        max_tokens = requested_max_tokens(body)
        if prompt is not None:
            req = RouteRequest(model, (), prompt.tokens, max_tokens, prompt.blocks, conversation)
            held = seen.held_blocks(model, self.tokenizers.sha256(model), nodes, now)
            ctx = PlacementContext(now, seen.affinity, held, links)
        else:  # not tokenizable here: message-level keys, size estimated
            keys = prefix_keys(body, self.config.affinity_messages)
            tokens = estimate_prompt_tokens(body)
            req = RouteRequest(model, keys, tokens, max_tokens, conversation=conversation)
            ctx = PlacementContext(now, seen.affinity, links=links)
        return Observed(
            req,
            nodes,
            ctx,
            local_only=local_only,
            over_cap=self.ledger.over_cap(),
            prefill_rates={n: seen.prefill_rate(s, model) for n, s in nodes.items()},
            link_rates=links,
            kv_bytes_per_token=seen.kv_bytes_per_token.get(model),
            logits_bytes=seen.logits_bytes.get(model),
        )

    def _nothing_up(self, plan: RoutePlan) -> APIError:
        model = plan.req.model
        why = ", ".join(f"{n}: {r}" for n, r in plan.rejected.items()) or "no nodes known"
        if plan.cloud_left_out == "spend-cap":
            return APIError(
                429,
                f"no node serving '{model}' is up ({why}) and the daily cloud spend cap "
                f"(${self.ledger.cap_usd:.2f}) is reached; retry later or raise max_usd_per_day",
                type="rate_limit_error",
                code="spend_cap_reached",
                headers={"Retry-After": "60"},
            )
        extra = "; the request is local-only" if plan.cloud_left_out == "local-only" else ""
        return APIError(
            503,
            f"no node serving '{model}' is up ({why}){extra}",
            type="server_error",
            code="no_node_available",
            headers={"Retry-After": "5"},
        )

    async def _split(self, plan: RoutePlan, body: dict[str, Any]) -> Split | None:
        """Carry out the plan's split: prefill on the other node and hand its KV to the decode
        node. A failure leaves the decode node to prefill itself, the reason saying why."""
        wanted = plan.split
        if wanted is None:
            return None
        if wanted.prefill is None:
            return Split(wanted.decode, wanted.reason)
        decode, prefill = plan.nodes[wanted.decode], plan.nodes[wanted.prefill]
        headers = self._node_headers(prefill)
        if headers != self._node_headers(decode):  # one key goes to both nodes
            return Split(decode.name, f"{wanted.reason},failed-keys-differ")
        model = plan.req.model
        try:
            handoff = await hand_off(
                self.client, prefill.address.url, decode.address.url, model, body, headers
            )
        except SplitFailed as exc:
            self.metrics.splits.labels("failed").inc()
            return Split(decode.name, f"{wanted.reason},failed-{exc}")
        self.metrics.splits.labels("ok").inc()
        self.observed.split_ran(handoff, prefill.name, decode.name, model)
        return Split(decode.name, f"{wanted.reason},prefill@{prefill.name}", handoff)

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

    def _prefill_rate(self, node: NodeStatus, model: str) -> float | None:
        """The prefill rate the split decision uses for `node` (`Observations.prefill_rate`)."""
        return self.observed.prefill_rate(node, model)

    async def _attempt(self, attempt: Attempt) -> Response:
        """Try the plan's targets in order (at most `max_attempts`) until one answers."""
        failures: list[str] = []
        last: Response | None = None
        for target, reason in attempt.plan.targets[: self.config.max_attempts]:
            name = target_name(target)
            try:
                response = await self._send(attempt, target, reason, failures)
            except TargetFailed as exc:
                failures.append(f"{name}:{exc.reason}")
                self.metrics.failovers.labels(name).inc()
                if isinstance(target, Candidate) and exc.reason != "http-429":
                    self.observed.failed(target.node, time.monotonic())
                last = exc.response or last
                continue
            self.metrics.routed.labels(name, str(response.status_code)).inc()
            if isinstance(target, Candidate) and response.status_code < 400:
                self.observed.served(attempt.plan.req, target.node, time.monotonic())
            return response
        if last is not None:
            return last
        raise APIError(
            502,
            f"every target for '{attempt.plan.req.model}' failed before answering: "
            f"{', '.join(failures)}",
            type="server_error",
            code="upstream_failed",
        )

    async def _send(
        self, attempt: Attempt, target: Target, reason: str, failures: list[str]
    ) -> Response:
        """One target: its request built, counted open on it until the answer is relayed."""
        route = attempt.route_header(target, reason, failures)
        out, on_usage = self._outgoing(attempt, target)
        name = target_name(target)
        self.observed.opened(name)
        closed = functools.partial(self.observed.closed, name)
        return await send(self.relay, out, route, on_usage, closed)

    def _outgoing(self, attempt: Attempt, target: Target) -> tuple[Outgoing, Any]:
        plan, split = attempt.plan, attempt.split
        if isinstance(target, Candidate):
            node = plan.nodes[target.node]
            headers = {**self._node_headers(node), ROUTED_HEADER: "1"}
            if split and split.handoff and target.node == split.decode_node:
                headers.update(split.handoff.headers())
            return Outgoing(node.address.url + plan.path, attempt.encoded, headers), None
        return self._cloud_outgoing(plan.path, attempt.body, target)

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


def _card(model: str, owner: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"nodes": [], "cloud": []}
    return {"id": model, "object": "model", "created": 0, "owned_by": owner, "meta": meta}


def _env(name: str) -> str | None:
    return os.environ.get(name) or None
