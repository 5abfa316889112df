"""Placement: a pure pipeline from (request, node states, policy) to ranked candidates.

Filters drop nodes that cannot serve the request (each says why); scorers rate the rest in
[0, 1]; the score is their weighted sum and the highest goes first:

    score = w_load · 1/(1 + (running + queued)/slots)        load: free capacity now
          + w_speed · rate / max(rate of candidates) · load     speed: one more stream's tokens/s
          + w_affinity · overlap                               affinity: its KV cache has it

`rate` is the per-stream decode rate the router estimates (`speed.py`), not the node's current
total: ranking by the total would favour whichever node is busiest. The speed term is scaled by
the load term, so a saturated node's speed counts for little and load dominates.

When the router can tokenize the request (`tokens.py`), overlap is token-level, as in
Dynamo's KV router: (leading request blocks the node holds) / (request blocks), over chained
32-token block hashes, "holds" meaning the node reported the block in /health or this router
sent it there recently. Otherwise overlap is 1 for the node that served the request's
longest message-level prefix last (chained hashes of its first 1..N messages, or the
prompt's head), else 0, and prompt size is estimated as characters / 4.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgebox.models.footprint import Footprint
from edgebox.router.config import Loading, Weights
from edgebox.router.nodes import NodeStatus
from edgebox.runtimes.prefix_blocks import matched_blocks

_PROMPT_HEAD_CHARS = 2048  # what keys the affinity of a completions prompt
_CHARS_PER_TOKEN = 4  # the router has no tokenizer; estimates are only for the split cost


@dataclass(frozen=True)
class RouteRequest:
    model: str
    prefix_keys: tuple[str, ...] = ()  # chained hashes of the prompt's head, shortest first
    prompt_tokens: int = 0  # exact when `blocks` were computed, else estimated
    max_tokens: int = 0  # the request's max_tokens (0: not given)
    blocks: tuple[str, ...] = ()  # chained token-block hashes (empty: not tokenized)
    # keys naming the request's conversation (`conversation_keys`): the first one the router
    # has placed before picks the node; all of them are recorded for the node that serves it
    conversation: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    node: str
    score: float
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "+".join(self.reasons) or "only-choice"


@dataclass(frozen=True)
class PlacementContext:
    now: float
    affinity: Mapping[str, str] = field(default_factory=dict)  # prefix key -> node name
    # node name -> the block-hash sets it holds (its /health report, this router's placements)
    blocks: Mapping[str, Sequence[Container[str]]] = field(default_factory=dict)
    # (from node, to node) → bytes/s measured between them (KV hand-offs), for transfers
    links: Mapping[tuple[str, str], float] = field(default_factory=dict)


Filter = Callable[[RouteRequest, NodeStatus, PlacementContext], str | None]
Scorer = Callable[[RouteRequest, NodeStatus, Sequence[NodeStatus], PlacementContext], float]


def serves_model(req: RouteRequest, node: NodeStatus, ctx: PlacementContext) -> str | None:
    return None if req.model in node.models else "model-not-served"


def is_healthy(req: RouteRequest, node: NodeStatus, ctx: PlacementContext) -> str | None:
    if not node.healthy:
        return "unhealthy"
    return None if node.usable(ctx.now) else "cooling-down"


def fits_context(req: RouteRequest, node: NodeStatus, ctx: PlacementContext) -> str | None:
    """The prompt estimate plus max_tokens must fit one sequence (unknown n_ctx passes)."""
    n_ctx = node.models[req.model].n_ctx if req.model in node.models else 0
    need = req.prompt_tokens + req.max_tokens
    return "context-too-small" if n_ctx and need > n_ctx else None


def load_score(req: RouteRequest, node: NodeStatus, _: Sequence[NodeStatus], __: Any) -> float:
    load = node.models[req.model]
    return 1.0 / (1.0 + (load.running + load.queued) / max(1, load.slots))


def speed_score(
    req: RouteRequest, node: NodeStatus, pool: Sequence[NodeStatus], _: PlacementContext
) -> float:
    best = max(n.models[req.model].decode_tokens_per_s for n in pool)
    relative = node.models[req.model].decode_tokens_per_s / best if best > 0 else 0.0
    return relative * load_score(req, node, pool, None)


def affinity_score(
    req: RouteRequest, node: NodeStatus, _: Sequence[NodeStatus], ctx: PlacementContext
) -> float:
    if req.blocks:
        return matched_blocks(req.blocks, *ctx.blocks.get(node.name, ())) / len(req.blocks)
    for key in reversed(req.prefix_keys):  # the longest prefix the router has placed decides
        if key in ctx.affinity:
            return 1.0 if ctx.affinity[key] == node.name else 0.0
    return 0.0


@dataclass(frozen=True)
class PlacementPolicy:
    filters: tuple[Filter, ...] = (serves_model, is_healthy, fits_context)
    scorers: tuple[tuple[str, Scorer, float], ...] = ()

    @classmethod
    def from_weights(cls, w: Weights) -> PlacementPolicy:
        return cls(
            scorers=(
                ("least-loaded", load_score, w.load),
                ("fastest", speed_score, w.speed),
                ("affinity", affinity_score, w.affinity),
            )
        )


def place(
    req: RouteRequest,
    nodes: Sequence[NodeStatus],
    policy: PlacementPolicy,
    ctx: PlacementContext,
) -> tuple[list[Candidate], dict[str, str]]:
    """Ranked candidates, best first, and why each other node was filtered out."""
    rejected: dict[str, str] = {}
    pool: list[NodeStatus] = []
    for node in nodes:
        reason = next((r for f in policy.filters if (r := f(req, node, ctx))), None)
        if reason:
            rejected[node.name] = reason
        else:
            pool.append(node)
    scored: list[tuple[float, str, dict[str, float]]] = []
    for node in pool:
        parts = {name: w * fn(req, node, pool, ctx) for name, fn, w in policy.scorers}
        scored.append((sum(parts.values()), node.name, parts))
    scored.sort(key=lambda s: (-s[0], s[1]))
    ranked = []
    for total, name, parts in scored:
        # Reasons: the terms where this node leads (or ties) the pool.
        reasons = tuple(
            k for k, v in parts.items() if v > 0 and v >= max(p[2][k] for p in scored) - 1e-9
        )
        ranked.append(Candidate(name, round(total, 4), reasons if len(pool) > 1 else ()))
    return ranked, rejected


def place_cold(
    req: RouteRequest,
    nodes: Sequence[NodeStatus],
    ctx: PlacementContext,
    rules: Loading = Loading(),
) -> tuple[list[Candidate], dict[str, str]]:
    """Where to load a model that no node has loaded: the up nodes that have it on disk and a
    memory budget that can hold it, those not too busy first (`busy`: see `too_busy`), then
    those with room for it without evicting anything, then the least busy.

        cost(node) = (too busy, 0 if need ≤ memory_free else 1, running + queued, name)

    `need` is what the node itself will allocate (`load_need`: weights + KV cache), so a node
    that would answer 503 model_too_large is not chosen.

    The reason is `load:on-disk` (`+no-eviction` where it fits in free memory, `+busy`)."""
    rejected: dict[str, str] = {}
    ranked: list[tuple[tuple[int, int, int, str], Candidate]] = []
    for node in nodes:
        if req.model not in node.available:
            rejected[node.name] = "model-not-on-disk"
            continue
        if not node.usable(ctx.now):
            rejected[node.name] = "unhealthy" if not node.healthy else "cooling-down"
            continue
        need = load_need(node, node.footprints.get(req.model), node.available[req.model])
        if not holds(node, need):
            rejected[node.name] = "memory-budget-too-small"
            continue
        fits = node.memory_free is not None and need <= node.memory_free
        crowded = too_busy(node, rules)
        reasons = ("load:on-disk", *(("no-eviction",) if fits else ()))
        reasons += ("busy",) if crowded else ()
        cost = (int(crowded), 0 if fits else 1, busyness(node), node.name)
        ranked.append((cost, Candidate(node.name, 1.0 / (1 + cost[1] + cost[2]), reasons)))
    ranked.sort(key=lambda item: item[0])
    return [c for _, c in ranked], rejected


def model_facts(model: str, nodes: Sequence[NodeStatus]) -> Footprint | None:
    """The model's weights, KV bytes per token and trained context as the nodes that have it
    on disk report them (the largest file, as a transfer's size); None: no node says."""
    known = [n.footprints[model] for n in nodes if model in n.footprints]
    return max(known, key=lambda f: f.weights, default=None)


def load_need(node: NodeStatus, facts: Footprint | None, size: int) -> int:
    """Bytes `node` allocates to load a model whose file is `size` bytes, by the node's own
    formula (`Footprint.need`, as node/ondemand.py checks it against its budget):

        need = weights + kv_bytes_per_token x min(load_ctx, context_length) x load_slots

    The file's size alone where the model's KV figures or the node's `load_ctx` are unknown
    (an older node, a non-GGUF model): the node then decides."""
    if facts is None or not facts.kv_bytes_per_token or not node.load_ctx:
        return size
    kv = facts.need(node.load_ctx, node.load_slots or 1) - facts.weights
    return max(size, facts.weights) + kv


def holds(node: NodeStatus, size: int) -> bool:
    """Whether the node's model memory budget can hold a model that takes `size` bytes once
    loaded (`load_need`) at all, evicting everything else; an unknown size or budget passes:
    the node decides."""
    return not (size and node.memory_budget is not None and size > node.memory_budget)


def busyness(node: NodeStatus) -> int:
    """Requests running and queued over all the node's models."""
    return sum(m.running + m.queued for m in node.models.values())


def too_busy(node: NodeStatus, rules: Loading) -> bool:
    """A node with `busy_queued_per_slot` requests queued per slot (1: a whole second round
    of work waiting behind the running one) is too busy to load another model: the load
    would share its compute with all of that, and the new model's first request would wait
    longer than a LAN copy of a small model to an idle node takes."""
    slots = sum(max(1, m.slots) for m in node.models.values()) or 1
    queued = sum(m.queued for m in node.models.values())
    return queued >= rules.busy_queued_per_slot * slots


def prefix_keys(body: Mapping[str, Any], n_messages: int) -> tuple[str, ...]:
    """Chained hashes of the first 1..`n_messages` messages (or one of the prompt's head).

    A shared system prompt matches on the first key; later turns of one conversation match
    on the longer ones, so the longest prefix placed before picks the node."""
    heads: list[Any]
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        heads = [messages[i] for i in range(min(n_messages, len(messages)))]
    elif isinstance(body.get("prompt"), str) and body["prompt"]:
        heads = [body["prompt"][:_PROMPT_HEAD_CHARS]]
    else:
        return ()
    keys = []
    digest = hashlib.sha256(str(body.get("model")).encode())
    for head in heads:
        digest.update(json.dumps(head, sort_keys=True, separators=(",", ":")).encode())
        keys.append(digest.copy().hexdigest()[:16])
    return tuple(keys)


def conversation_key(model: str, kind: str, value: object) -> str:
    """An affinity key for one conversation id (`kind`: what names it, e.g. "response")."""
    digest = hashlib.sha256(f"{model}\0{kind}\0{value}".encode()).hexdigest()[:16]
    return f"conversation:{digest}"


def conversation_keys(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The conversation a chat request names: its `prompt_cache_key` (what the Codex CLI sends
    with every turn), then its `user`. Empty when it names none."""
    model = body.get("model")
    named = [(k, body.get(k)) for k in ("prompt_cache_key", "user")]
    return tuple(conversation_key(str(model), k, v) for k, v in named if isinstance(v, str) and v)


def requested_max_tokens(body: Mapping[str, Any]) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Rough prompt length in tokens (characters / 4), for the split cost and context fit."""
    if isinstance(body.get("messages"), list):
        chars = sum(
            len(json.dumps(m.get("content", ""))) for m in body["messages"] if isinstance(m, dict)
        )
    else:
        chars = len(json.dumps(body.get("prompt", "")))
    return chars // _CHARS_PER_TOKEN
