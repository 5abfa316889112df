"""Join tokens: one pasteable line that names the hub, pins its certificate, and proves a grant.

Wire form: ``ebx1_<base64url(JSON)>.<secret>`` where the JSON is
``{"u": [hub urls], "f": cert fingerprint, "i": token id}``.
The part before the dot is public (it tells the node where to go and whom to trust); the secret
after it is shown once, and the hub keeps only its sha256.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from enum import Enum

PREFIX = "ebx1_"
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")


class TokenError(ValueError):
    """A token line that cannot be parsed; the message never contains the secret."""


@dataclass(frozen=True)
class JoinToken:
    hub_urls: tuple[str, ...]
    fingerprint: str  # "sha256:<hex>" of the hub's TLS certificate (DER)
    token_id: str
    secret: str

    def __repr__(self) -> str:  # keep the secret out of tracebacks and debug logs
        return f"JoinToken(id={self.token_id!r}, hub_urls={self.hub_urls!r})"


class TokenState(Enum):
    VALID = "valid"
    USED = "used"
    EXPIRED = "expired"
    REVOKED = "revoked"


def new_token_id() -> str:
    return "tok_" + secrets.token_hex(6)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """What the hub stores: sha256 hex of the secret (256 random bits need no slow hash)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def encode(token: JoinToken) -> str:
    header = json.dumps(
        {"u": list(token.hub_urls), "f": token.fingerprint, "i": token.token_id},
        separators=(",", ":"),
    ).encode()
    return PREFIX + base64.urlsafe_b64encode(header).decode().rstrip("=") + "." + token.secret


def parse(line: str) -> JoinToken:
    """Parse a pasted token line; raises TokenError naming what is wrong (never the secret)."""
    line = line.strip()
    if not line.startswith(PREFIX):
        raise TokenError(f"not an edgebox join token (it should start with {PREFIX!r})")
    head, dot, secret = line[len(PREFIX) :].partition(".")
    if not dot or not secret:
        raise TokenError("join token is truncated: the secret after the '.' is missing")
    try:
        data = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        urls = tuple(str(u) for u in data["u"])
        fingerprint, token_id = str(data["f"]), str(data["i"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenError("join token is damaged: its hub header cannot be read") from exc
    if not urls or not all(u.startswith("https://") for u in urls):
        raise TokenError("join token names no https:// hub address")
    if not _FINGERPRINT.match(fingerprint):
        raise TokenError("join token carries no valid hub fingerprint (sha256:<64 hex>)")
    return JoinToken(hub_urls=urls, fingerprint=fingerprint, token_id=token_id, secret=secret)


def state(
    *, expires_at: float, used_at: float | None, revoked_at: float | None, now: float
) -> TokenState:
    """Which refusal applies, in the order a user can act on: revoked, used, expired."""
    if revoked_at is not None:
        return TokenState.REVOKED
    if used_at is not None:
        return TokenState.USED
    if now >= expires_at:
        return TokenState.EXPIRED
    return TokenState.VALID


def parse_duration(text: str) -> int:
    """'30m' -> 1800 seconds; bare numbers are seconds. Raises ValueError."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ValueError(f"cannot read duration {text!r}; use e.g. 90s, 30m, 2h, 1d")
    value = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if value <= 0:
        raise ValueError("duration must be positive")
    return value


def join_command(token_line: str) -> str:
    return f"pipx run edgebox join {token_line}"
