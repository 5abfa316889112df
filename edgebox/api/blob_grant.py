"""Blob grants: "a member of this fleet may read this node's model blobs", signed by the hub.

A grant is the least a node needs to fetch model bytes from a peer: it opens the peer's
`/v1/blobs/...` and `/v1/store/models/...` routes only (never inference, never `/admin`),
for one node (the audience, its hub node id), for minutes (`GRANT_TTL_S`). The hub signs it
with its Ed25519 key, the key of the TLS certificate every member pinned when it joined, and
hands it out over that pinned channel (heartbeat answers to nodes, `GET /v1/hub/blob-grants`
to logged-in users). The serving node checks it offline with the hub's public key from its
fleet.json: signature, hub fingerprint, audience, and the time window.

Wire form: ``ebg1.<base64url(payload)>.<base64url(signature)>`` where the payload is canonical
JSON ``{"p": PURPOSE, "hub": "sha256:...", "aud": NODE_ID, "sub": WHO, "iat": s, "exp": s}``
and the signature is Ed25519 over ``PURPOSE + "\\n" + payload``. A grant is a bearer
credential: it is never logged and errors about one never quote it.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PREFIX = "ebg1."
PURPOSE = "edgebox-blob-read-v1"
GRANT_TTL_S = 900  # what the hub issues: long enough for a pull to start and run
MAX_TTL_S = 3600  # what a node accepts: a grant living longer is refused, whoever signed it
MAX_SKEW_S = 300  # a grant issued this far in the future is still taken (clocks differ)
MAX_GRANT_CHARS = 2048
CHECKED_CACHE = 256  # grants a node remembers as verified (a pull sends one per chunk)
BLOB_PATHS = ("/v1/blobs/", "/v1/store/models/")  # the only routes a grant opens


class GrantError(ValueError):
    """A grant that does not hold; the message says which check failed, never the grant."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _strict_unb64(text: str) -> bytes:
    """`text` decoded only when it is the one unpadded base64url form of its bytes: the
    lenient decoder drops stray characters and spare bits, and every spelling of one grant
    would be a fresh signature check and a fresh entry in the verified-grant cache."""
    data = _unb64(text)
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def public_key_text(key: Ed25519PrivateKey) -> str:
    """The hub's public key as members keep it: base64 of the raw 32 bytes."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _signed(payload: bytes) -> bytes:
    return PURPOSE.encode() + b"\n" + payload


def issue(
    key: Ed25519PrivateKey,
    *,
    hub: str,
    audience: str,
    subject: str,
    now: float,
    ttl: float = GRANT_TTL_S,
) -> str:
    """A grant for `audience` (a node id), signed by the hub `key` whose certificate
    fingerprint is `hub`; `subject` says who it was issued to (for the serving node's log)."""
    body: dict[str, str | int] = {"p": PURPOSE, "hub": hub, "aud": audience, "sub": subject}
    body |= {"iat": int(now), "exp": int(now + ttl)}
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return PREFIX + _b64(payload) + "." + _b64(key.sign(_signed(payload)))


def _decode(grant: str) -> tuple[bytes, bytes]:
    if len(grant) > MAX_GRANT_CHARS or not grant.startswith(PREFIX):
        raise GrantError("not a blob grant")
    payload, dot, signature = grant[len(PREFIX) :].partition(".")
    if not dot:
        raise GrantError("the blob grant is truncated")
    try:
        return _strict_unb64(payload), _strict_unb64(signature)
    except (binascii.Error, ValueError):
        raise GrantError("the blob grant does not decode") from None


def _claims(payload: bytes) -> dict[str, Any]:
    try:
        claims = json.loads(payload)
    except ValueError:
        raise GrantError("the blob grant does not decode") from None
    if not isinstance(claims, dict) or claims.get("p") != PURPOSE:
        raise GrantError("not a blob grant")
    for name in ("iat", "exp"):
        if not isinstance(claims.get(name), int):
            raise GrantError(f"the blob grant has no {name}")
    return claims


@dataclass
class GrantVerifier:
    """What a node checks a grant against: its hub (fingerprint and public key) and its own
    node id. `hub_key` may come later (a node joined before hubs issued grants learns it from
    its heartbeat answers); until then every grant is refused."""

    hub: str
    audience: str
    hub_key: str | None = None
    clock: Callable[[], float] = field(default=time.time)
    # grant → (subject, exp) of grants that verified: a pull's next chunk costs a lookup, not
    # a signature check; bounded, and emptied when full
    _checked: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False)

    def _public(self) -> Ed25519PublicKey:
        if not self.hub_key:
            raise GrantError("this node does not know its hub's public key yet")
        try:
            return Ed25519PublicKey.from_public_bytes(base64.b64decode(self.hub_key))
        except ValueError:
            raise GrantError("this node's record of its hub's public key is damaged") from None

    def verified(self, grant: str) -> bool:
        """Whether `grant` was verified before (a lookup; `check` still checks its expiry)."""
        return grant in self._checked

    def check(self, grant: str) -> str:
        """The grant's subject when it holds for this node now; else GrantError saying why."""
        known = self._checked.get(grant)
        if known is not None:
            if known[1] <= self.clock():
                del self._checked[grant]
                raise GrantError("the blob grant has expired: ask the hub for a fresh one")
            return known[0]
        subject, expires = self._verify(grant)
        if len(self._checked) >= CHECKED_CACHE:
            self._checked.clear()
        self._checked[grant] = (subject, expires)
        return subject

    def _verify(self, grant: str) -> tuple[str, int]:
        payload, signature = _decode(grant)
        try:
            self._public().verify(signature, _signed(payload))
        except InvalidSignature:
            raise GrantError("the blob grant's signature is not this node's hub's") from None
        claims = _claims(payload)
        if claims.get("hub") != self.hub:
            raise GrantError("the blob grant is for another hub")
        if claims.get("aud") != self.audience:
            raise GrantError("the blob grant is for another node")
        now = self.clock()
        if claims["exp"] <= now:
            raise GrantError("the blob grant has expired: ask the hub for a fresh one")
        if claims["iat"] > now + MAX_SKEW_S or claims["exp"] - claims["iat"] > MAX_TTL_S:
            raise GrantError("the blob grant's time window is not acceptable")
        return str(claims.get("sub", "")), int(claims["exp"])
