"""Which nodes the router may send requests and keys to.

Every `NodeAddress` carries a trust level from its source:

- `configured`: named by the operator (`--node`, `[[nodes]]`, `--fleet-node`, this node);
- `hub`: at the address the hub recorded for it (the hub saw its heartbeats there);
- `unverified`: learned from an mDNS advert, which anyone on the LAN can send.

An unverified address becomes `verified` once the node there proves, by signing a fresh nonce
(`GET /edgebox/identity`, see `edgebox.node.identity_api`), that it holds a key the operator
pinned (`trusted_node_keys`, `--trust-node`) or the hub recorded for that node. A hub node seen
on mDNS keeps its hub address unless its LAN address passes that proof. What stays unverified
is listed but gets no requests, unless the operator opted in with `--trust-lan` /
`trust_mdns = true` (then it is `lan`: requests, but never a key).
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgebox.api.identity import (
    IDENTITY_PATH,
    canonical_address,
    key_fingerprint,
    proof_message,
)
from edgebox.router.nodes import NodeAddress

log = logging.getLogger("edgebox.router")

PROOF_CONTEXT = "edgebox-router-v1"
VERIFIED_TTL_S = 300.0  # a passed proof is asked again after this long
FAILED_RETRY_S = 10.0  # a failed one is retried after this long (a node may come up late)
TRUSTED = ("configured", "hub", "verified")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # why not, or "verified"
    fingerprint: str = ""  # the key the node proved it holds ("" when it proved none)


def check_proof(
    answer: Any, *, nonce: str, node_id: str | None, address: str, trusted: Collection[str]
) -> Verdict:
    """Whether `answer` proves the node at `address` holds one of the `trusted` keys (pure)."""
    if not isinstance(answer, Mapping):
        return Verdict(False, "no identity proof (not a JSON object)")
    try:
        public_key = str(answer["public_key"])
        claimed_id = str(answer["id"])
        signature = base64.b64decode(str(answer["signature"]), validate=True)
        fingerprint = key_fingerprint(public_key)
        key = serialization.load_ssh_public_key(public_key.encode())
    except (KeyError, ValueError, IndexError, TypeError):
        return Verdict(False, "no identity proof (malformed answer)")
    if not isinstance(key, Ed25519PublicKey):
        return Verdict(False, "identity key is not Ed25519")
    if node_id is not None and claimed_id != node_id:
        return Verdict(False, "proof names another node id than the advert", fingerprint)
    message = proof_message(nonce=nonce, node_id=claimed_id, context=PROOF_CONTEXT, address=address)
    try:
        key.verify(signature, message)
    except InvalidSignature:
        seen = answer.get("address")
        why = f" (signed for {seen}, not {address})" if seen and seen != address else ""
        return Verdict(False, "identity proof does not verify" + why, fingerprint)
    if fingerprint not in trusted:
        return Verdict(
            False, f"key {fingerprint} is neither pinned nor known to the hub", fingerprint
        )
    return Verdict(True, "verified", fingerprint)


def dialled_address(url: str) -> str:
    parts = urlsplit(url)
    return canonical_address(parts.hostname or "", parts.port or 80)


class Verifier:
    """Challenges unverified addresses (cached per address, node id and trusted keys) and
    returns each address with the trust it has earned."""

    def __init__(self, client: httpx.AsyncClient, *, trust_lan: bool = False) -> None:
        self.client = client
        self.trust_lan = trust_lan
        self._seen: dict[tuple[str, str | None, frozenset[str]], tuple[float, Verdict]] = {}

    async def resolve(self, address: NodeAddress) -> NodeAddress:
        if address.trust != "unverified":
            return address
        verdict = await self._verdict(address)
        if verdict.ok:
            return replace(address, trust="verified", fallback_url=None, note="")
        note = f"{verdict.reason} (at {address.url})"
        if address.fallback_url:  # a hub node: its hub-recorded address, never the advert's
            return replace(
                address,
                url=address.fallback_url,
                trust="hub",
                fallback_url=None,
                note=f"LAN address not used: {note}",
            )
        return replace(address, trust="lan" if self.trust_lan else "unverified", note=note)

    async def _verdict(self, address: NodeAddress) -> Verdict:
        cache_key = (address.url, address.node_id, address.keys)
        now = time.monotonic()
        cached = self._seen.get(cache_key)
        if cached is not None:
            at, verdict = cached
            if now - at < (VERIFIED_TTL_S if verdict.ok else FAILED_RETRY_S):
                return verdict
        verdict = await self.challenge(address)
        if verdict.ok != (cached is not None and cached[1].ok):
            log.info("node %s at %s: %s", address.name, address.url, verdict.reason)
        self._seen[cache_key] = (now, verdict)
        if len(self._seen) > 4096:  # adverts come and go: forget the oldest
            self._seen.pop(next(iter(self._seen)))
        return verdict

    async def challenge(self, address: NodeAddress) -> Verdict:
        """Ask the node at `address` to sign a fresh nonce. No key is sent (the control-plane
        client carries none; keys go per request, and only to trusted nodes)."""
        nonce = secrets.token_urlsafe(24)
        try:
            r = await self.client.get(
                address.url + IDENTITY_PATH,
                params={"nonce": nonce, "context": PROOF_CONTEXT},
                timeout=2.0,
            )
            answer = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            return Verdict(False, f"identity proof unavailable ({type(exc).__name__})")
        if answer is None:
            return Verdict(False, f"identity proof unavailable (HTTP {r.status_code})")
        return check_proof(
            answer,
            nonce=nonce,
            node_id=address.node_id,
            address=dialled_address(address.url),
            trusted=address.keys,
        )
