"""Run a plan's `Fetch` (`fetch.py`): start the pull on the chosen node with `POST
/admin/models/pull` (the holders as its peers, or none for the internet) and wait for the job,
at most `[loading] pull_timeout_s`, polling `GET /admin/models/pull/{job}`.

Requests for the same model and node during one pull share it: one job, one task, each request
awaiting it shielded, so a client that leaves cancels only its own wait (the pull runs on, and
the next request finds the model there). A finished pull is remembered for `REMEMBER_S`, so
requests that come before the next poll sees the model on the node's disk do not start another.

The router authenticates to the node's pull routes with the node's pull key (`serve
--pull-key`, which opens `/admin/models/pull` and nothing else; the admin key works too):
`[[nodes]] pull_key_env`, else `node_pull_key_env` / `--node-pull-key`, else the key it sends
for inference (enough for a node without admin or pull key on the router's own box, whose
`/admin/` answers loopback clients only). A `/v1` key never opens a pull. Holders are given
as URLs without a key: the node sends its own fleet key to the holders it found itself (its
hub's peers, mDNS) and, when the router holds its admin key, to any holder; with the pull key
a holder the node does not know is asked with no key (a pull key must not hand the node's
inference key to a URL its holder names), so keyed holders need a hub or mDNS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from edgebox.api.errors import APIError
from edgebox.router.nodes import NodeStatus
from edgebox.router.plan import RoutePlan

POLL_S = 0.25  # how often the job is read; a pull of a small model takes seconds
REMEMBER_S = 30.0  # longer than any poll interval: the node's /health lists it by then
_CALL_TIMEOUT_S = 10.0
log = logging.getLogger("edgebox.router")


class PullFailed(Exception):
    """What went wrong, in words a client can act on (never a key)."""


@dataclass(frozen=True)
class PullOrder:
    """One pull to run: where, what, from which peers, with which admin headers."""

    node: str
    url: str  # the node's base URL
    model: str
    peers: tuple[str, ...]  # holders' base URLs; empty: the internet
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


class Pulls:
    """The pulls this router runs: at most one per (node, model) at a time."""

    def __init__(self, client: httpx.AsyncClient, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.started = 0  # pull jobs started on nodes (the router's /health shows it)
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._done: dict[tuple[str, str], float] = {}  # → when it finished (monotonic)

    async def bring(self, order: PullOrder) -> None:
        """Return once the model is in the node's store; PullFailed saying why otherwise."""
        key = (order.node, order.model)
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(self._run(order))
            self._running[key] = task
            task.add_done_callback(lambda t: self._finished(key, t))
        await asyncio.shield(task)

    def _finished(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        self._running.pop(key, None)
        if not task.cancelled() and task.exception() is None:  # (reads it: never "unretrieved")
            self._done[key] = time.monotonic()

    def fold(self, nodes: Mapping[str, NodeStatus], now: float) -> dict[str, NodeStatus]:
        """`nodes` with the models pulled in the last `REMEMBER_S` on their disks."""
        for key, at in list(self._done.items()):
            if now - at > REMEMBER_S:
                del self._done[key]
        out = dict(nodes)
        for node, model in self._done:
            status = out.get(node)
            if status is not None and model not in status.available:
                out[node] = replace(status, available={**status.available, model: 0})
        return out

    async def _run(self, order: PullOrder) -> None:
        body: dict[str, Any] = {"spec": order.model}
        if order.peers:
            body["peers"] = [{"url": url} for url in order.peers]
        job = await self._call(order, "POST", "/admin/models/pull", body)
        self.started += 1
        deadline = time.monotonic() + self.timeout_s
        while job.get("state") not in ("done", "failed"):
            if time.monotonic() > deadline:
                raise PullFailed(
                    f"the pull did not finish in {self.timeout_s:g} s ({_progress(job)}); "
                    "it goes on on the node: retry later, or raise [loading] pull_timeout_s"
                )
            await asyncio.sleep(POLL_S)
            job = await self._call(order, "GET", f"/admin/models/pull/{job.get('job')}")
        if job["state"] == "failed":
            raise PullFailed(f"the pull failed: {job.get('error') or 'no reason given'}")

    async def _call(
        self, order: PullOrder, method: str, path: str, body: Any = None
    ) -> dict[str, Any]:
        try:
            r = await self.client.request(
                method, order.url + path, json=body, headers=order.headers, timeout=_CALL_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            raise PullFailed(f"the node did not answer ({type(exc).__name__})") from None
        if r.status_code in (401, 403):
            raise PullFailed(
                f"the node refused the router's pull credential (HTTP {r.status_code}): start "
                "the node with --pull-key and give the router that key (--node-pull-key, "
                "node_pull_key_env or [[nodes]] pull_key_env)"
            )
        try:
            answer = r.json()
        except ValueError:
            answer = None
        if r.status_code >= 400 or not isinstance(answer, dict):
            status = r.status_code
            raise PullFailed(f"the node refused the pull (HTTP {status}: {_message(answer)})")
        return answer


async def fetch_first(pulls: Pulls, plan: RoutePlan, headers: Mapping[str, str]) -> RoutePlan:
    """Run `plan.fetch` on the plan's first node (a peer transfer or a download). A failure
    moves on to the plan's other targets (a cloud upstream), else is a 503 naming the model,
    the node and why."""
    fetch = plan.fetch
    assert fetch is not None
    node = plan.nodes[fetch.node]
    peers = tuple(plan.nodes[h].address.url for h in fetch.holders)
    try:
        await pulls.bring(PullOrder(node.name, node.address.url, fetch.spec, peers, headers))
        return plan
    except PullFailed as exc:
        if len(plan.targets) > 1:
            log.warning("pull of %s on %s failed: %s", fetch.spec, node.name, exc)
            return replace(plan, targets=plan.targets[1:], fetch=None, split=None)
        how = f"a peer transfer from {', '.join(fetch.holders)}" if fetch.holders else ""
        raise APIError(
            503,
            f"could not bring the model '{fetch.spec}' to node {node.name} "
            f"({how or 'a download from the internet'}): {exc}",
            type="server_error",
            code="model_pull_failed",
        ) from None


def _message(answer: Any) -> str:
    error = answer.get("error") if isinstance(answer, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message)[:300] if message else "no message"


def _progress(job: Mapping[str, Any]) -> str:
    done, total = job.get("bytes_done") or 0, job.get("bytes_total")
    return f"{done / 1e6:.0f} of {total / 1e6:.0f} MB" if total else f"{done / 1e6:.0f} MB so far"
