"""Proof of possession: a node re-registers (or rotates its key) by signing the request.

A join token only ever creates a new node. To re-register an existing node, the node signs a
small statement with its current Ed25519 key (fleet/identity.py's ssh/id_ed25519): which hub
(its certificate fingerprint), which action, the key it holds, the key it wants (the same one,
or a new one for a rotation), its sshd host key and a millisecond timestamp. The hub checks the
signature against the key it has on record; the timestamp must lie within `MAX_SKEW_S` of the
hub's clock and be later than the last one the hub accepted for that node, so a captured
request cannot be replayed. A rotation is also signed by the new key, so a node cannot claim a
key it does not hold.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PURPOSE = "edgebox-rejoin-v1"
MAX_SKEW_S = 300.0  # the node's and hub's clocks may differ this much


class ProofError(ValueError):
    """A signature or statement that does not verify; the message says which part."""


def statement(
    *, hub: str, key: str, new_key: str, host_key: str | None, ts_ms: int
) -> dict[str, Any]:
    """The signed statement: everything the hub will change, bound to one hub and one moment."""
    return {
        "purpose": PURPOSE,
        "hub": hub,
        "key": key,
        "new_key": new_key,
        "host_key": host_key,
        "ts_ms": ts_ms,
    }


def message(payload: dict[str, Any]) -> bytes:
    """The exact bytes signed: canonical JSON (sorted keys, no spaces)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def public_line(key: Ed25519PrivateKey) -> str:
    """`ssh-ed25519 BASE64` of a private key's public half."""
    raw = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return raw.decode()


def sign(key: Ed25519PrivateKey, payload: dict[str, Any]) -> str:
    """Base64 Ed25519 signature over `message(payload)`."""
    return base64.b64encode(key.sign(message(payload))).decode()


def signed_request(
    current: Ed25519PrivateKey,
    *,
    hub: str,
    host_key: str | None,
    new: Ed25519PrivateKey | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The body of POST /v1/hub/rejoin: statement, signature, and the new key's when rotating."""
    key = public_line(current)
    new_key = public_line(new) if new is not None else key
    ts_ms = int((time.time() if now is None else now) * 1000)
    payload = statement(hub=hub, key=key, new_key=new_key, host_key=host_key, ts_ms=ts_ms)
    body = {"statement": payload, "signature": sign(current, payload)}
    if new is not None:
        body["new_key_signature"] = sign(new, payload)
    return body


def _ed25519(line: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_ssh_public_key(" ".join(line.split()[:2]).encode())
    except (ValueError, TypeError, IndexError):
        raise ProofError("not an OpenSSH public key line") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ProofError("only ssh-ed25519 keys can sign a re-registration")
    return key


def verify(public_key_line: str, payload: dict[str, Any], signature: str) -> None:
    """Raise ProofError unless `signature` is `public_key_line`'s signature over `payload`."""
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        raise ProofError("the signature is not base64") from None
    try:
        _ed25519(public_key_line).verify(raw, message(payload))
    except InvalidSignature:
        raise ProofError("the signature does not verify with the node's registered key") from None


def check_fresh(ts_ms: int, *, now: float, last_ms: int | None) -> None:
    """Raise ProofError for a statement outside the clock window or not newer than the last."""
    if abs(ts_ms / 1000 - now) > MAX_SKEW_S:
        raise ProofError(
            f"the statement's timestamp is more than {MAX_SKEW_S:.0f} s from the hub's clock"
        )
    if last_ms is not None and ts_ms <= last_ms:
        raise ProofError("the statement is not newer than the last accepted one (replayed?)")
