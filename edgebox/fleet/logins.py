"""User logins: one pasteable line that names the hub, pins its certificate and carries a user's
read token (`edgebox hub user add` prints it, `edgebox login` stores it).

Wire form: ``ebu1_<base64url(JSON {"u": [hub urls], "f": cert fingerprint})>.<token>``. Unlike a
join token it is not single-use: it lets its holder read the node list (names, public keys,
tunnel ports) until the admin removes the user. The hub keeps only its sha256.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

PREFIX = "ebu1_"
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")


class LoginError(ValueError):
    """A login line that cannot be used; the message never contains the token."""


@dataclass(frozen=True)
class Login:
    hub_urls: tuple[str, ...]
    fingerprint: str
    token: str

    def __repr__(self) -> str:  # keep the token out of tracebacks
        return f"Login(hub_urls={self.hub_urls!r})"


def encode(urls: list[str] | tuple[str, ...], fingerprint: str, token: str) -> str:
    head = json.dumps({"u": list(urls), "f": fingerprint}, separators=(",", ":")).encode()
    return PREFIX + base64.urlsafe_b64encode(head).decode().rstrip("=") + "." + token


def parse(line: str) -> Login:
    line = line.strip()
    if not line.startswith(PREFIX):
        raise LoginError(f"not an edgebox login line (it should start with {PREFIX!r})")
    head, dot, token = line[len(PREFIX) :].partition(".")
    if not dot or not token:
        raise LoginError("login line is truncated: the token after the '.' is missing")
    try:
        data = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        urls, fingerprint = tuple(str(u) for u in data["u"]), str(data["f"])
    except (ValueError, KeyError, TypeError):
        raise LoginError("login line is damaged: its hub address part does not decode") from None
    if not urls or not all(u.startswith("https://") for u in urls):
        raise LoginError("login line names no https:// hub address")
    if not _FINGERPRINT.match(fingerprint):
        raise LoginError("login line carries no valid sha256 certificate fingerprint")
    return Login(urls, fingerprint, token)
