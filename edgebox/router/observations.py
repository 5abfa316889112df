"""What the router has seen of its nodes, kept between requests: the one mutable store
placement reads.

The poller keeps each node's own report (`nodes.NodeStatus`); this keeps what the router
learns itself: per-stream decode speed (`speed.SpeedBook`), the requests it has open on each
node, which nodes failed a request lately (skipped for `COOLDOWN_S`), which node it last sent
each message prefix and each token block to (affinity), and what prefill/decode splits
measured (prefill rates, link rates, KV bytes per token). Requests read
it through `nodes()` and the other readers below, which hand out values; the policies
(`placement`, `cloud.plan_targets`, `disagg.should_split`) stay pure functions over those.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from edgebox.router.disagg import Handoff
from edgebox.router.nodes import COOLDOWN_S, NodeStatus, with_inflight
from edgebox.router.placement import RouteRequest
from edgebox.router.speed import SpeedBook
from edgebox.router.tokens import RecentBlocks

AFFINITY_ENTRIES = 4096  # message-prefix keys remembered, least recently placed dropped first


class Observations:
    """Per-node observations with a small API: readers give placement values, recorders are
    called as requests open, finish, land on a node, or split."""

    def __init__(self, *, recent_blocks_ttl_s: float) -> None:
        self.speeds = SpeedBook()  # per-stream decode rates, for placement's speed term
        self.recent_blocks = RecentBlocks(ttl_s=recent_blocks_ttl_s)
        self._affinity: OrderedDict[str, str] = OrderedDict()  # prefix key → node placed on
        self.inflight: dict[str, int] = {}  # requests this router has open on each node
        self._cooldown_until: dict[str, float] = {}  # node → skipped until (monotonic time)
        self.prefill_rates: dict[str, float] = {}  # node → tokens/s, measured in splits
        self.link_rates: dict[tuple[str, str], float] = {}  # (prefill, decode) → bytes/s
        self.kv_bytes_per_token: dict[str, float] = {}  # model → KV bytes/token
        self.logits_bytes: dict[str, int] = {}  # model → bytes of logits sent with each KV

    # -- reading --------------------------------------------------------------------------------

    def nodes(
        self, polled: Iterable[NodeStatus], routable: Iterable[NodeStatus], now: float
    ) -> dict[str, NodeStatus]:
        """The routable nodes as placement should see them: each counting at least the
        requests open on it here, and with this router's per-stream speed estimates. Every
        polled status is folded into the speed book first (once per poll), and a node that
        failed a request lately is marked cooling down."""
        for status in polled:
            self.speeds.observe(status)
        open_here = self.inflight
        seen = {
            n.name: with_inflight(self._cooled(n, now), open_here.get(n.name, 0)) for n in routable
        }
        return self.speeds.apply(seen, now)

    def _cooled(self, node: NodeStatus, now: float) -> NodeStatus:
        until = self._cooldown_until.get(node.name, 0.0)
        return replace(node, cooldown_until=until) if until > now else node

    @property
    def affinity(self) -> Mapping[str, str]:
        """Prefix key → the node that served it last (a read-only view)."""
        return MappingProxyType(self._affinity)

    def held_blocks(
        self, model: str, sha256: str | None, nodes: Mapping[str, NodeStatus], now: float
    ) -> dict[str, Sequence[Container[str]]]:
        """Per node, the token-block sets it holds (its report, and what was sent there)."""
        return self.recent_blocks.held(model, sha256, nodes, now)

    def prefill_rate(self, node: NodeStatus, model: str) -> float | None:
        """Prompt tokens/s: what the node measures itself (its /metrics; the same yardstick on
        every node), else what this router measured in splits, else the configured seed."""
        load = node.models.get(model)
        reported = load.prefill_tokens_per_s if load is not None else 0.0
        return reported or self.prefill_rates.get(node.name) or node.address.prefill_tokens_per_s

    def learnt(self) -> dict[str, Any]:
        """What splits measured, for /health (the cost model prefers it to the settings)."""
        return {
            "prefill_tokens_per_s": self.prefill_rates,
            "link_bytes_per_s": {f"{p}>{d}": r for (p, d), r in self.link_rates.items()},
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "logits_bytes": self.logits_bytes,
        }

    # -- recording ------------------------------------------------------------------------------

    def opened(self, node: str) -> None:
        self.inflight[node] = self.inflight.get(node, 0) + 1

    def closed(self, node: str) -> None:
        self.inflight[node] = max(0, self.inflight.get(node, 0) - 1)

    def failed(self, node: str, now: float) -> None:
        """Skip a node that just failed a request until its cooldown ends."""
        expired = [n for n, until in self._cooldown_until.items() if until <= now]
        for name in expired:
            del self._cooldown_until[name]
        self._cooldown_until[node] = now + COOLDOWN_S

    def served(self, req: RouteRequest, node: str, now: float) -> None:
        """A node took the request: its prefixes and blocks are likely cached there now, and
        its conversation continues there."""
        for key in (*req.prefix_keys, *req.conversation):
            self._affinity[key] = node
            self._affinity.move_to_end(key)
        while len(self._affinity) > AFFINITY_ENTRIES:
            self._affinity.popitem(last=False)
        self.recent_blocks.sent(req.blocks, node, now)

    def split_ran(self, handoff: Handoff, prefill: str, decode: str, model: str) -> None:
        """Fold one split's measurements into the cost model's inputs (exponential averages)."""
        if handoff.prefill_s > 0:
            _average(self.prefill_rates, prefill, handoff.tokens / handoff.prefill_s)
        sent = handoff.kv_bytes + handoff.logits_bytes
        if handoff.transfer_s > 0 and handoff.kv_bytes > 0:
            _average(self.link_rates, (prefill, decode), sent / handoff.transfer_s)
        if handoff.tokens > 0:
            _average(self.kv_bytes_per_token, model, handoff.kv_bytes / handoff.tokens)
        self.logits_bytes[model] = handoff.logits_bytes


def _average(table: dict[Any, float], key: Any, sample: float) -> None:
    old = table.get(key)
    table[key] = sample if old is None else 0.7 * old + 0.3 * sample
