"""The node side of `edgebox ssh`: hub users' SSH keys in the node's authorized_keys.

A user's laptop key reaches the hub when they log in (`edgebox login` registers it) or when
the admin adds them with `--key`. Every heartbeat answer lists the users' public keys; a node
that joined with user keys on (the default; `edgebox join --no-user-keys` keeps them out)
keeps one line per user in the authorized_keys file of the account it serves ssh on (the
account that ran `join`), each marked `edgebox-user:NAME`. Only marked lines are ever
added, changed or removed: the account's own keys stay as they are. A user removed at the hub
loses their line at the node's next beat.

Trust: whoever administers the hub decides who may log in to the joined nodes' account, as
it already decides who may jump through its relay (docs/security.md).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edgebox.fleet._files import write_atomic
from edgebox.fleet.relay import RelayConfigError, key_material

log = logging.getLogger("edgebox.heartbeat")

MARK = "edgebox-user:"
OPTIONS = "no-agent-forwarding,no-X11-forwarding"


def this_account() -> tuple[str, Path]:
    """The account running edgebox, and its home."""
    entry = pwd.getpwuid(os.geteuid())
    return entry.pw_name, Path(entry.pw_dir)


def setting(file: Path | None = None) -> dict[str, str]:
    """What fleet.json keeps: the account users log in to, and its authorized_keys file."""
    account, home = this_account()
    return {"account": account, "file": str(file or home / ".ssh" / "authorized_keys")}


def _label(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)[:64]


def user_lines(users: Iterable[Mapping[str, Any]]) -> list[str]:
    """One authorized_keys line per user with a valid key (bad entries are skipped)."""
    lines = []
    for user in users:
        try:
            key = key_material(str(user.get("ssh_public_key") or ""))
        except RelayConfigError:
            continue
        lines.append(f"{OPTIONS} {key} {MARK}{_label(str(user.get('name') or '?'))}")
    return sorted(lines)


def merged(text: str, users: Iterable[Mapping[str, Any]]) -> str:
    """`text` (an authorized_keys file) with its marked lines replaced by the users'."""
    kept = [line for line in text.splitlines() if MARK not in line]
    return "\n".join([*kept, *user_lines(users)]) + "\n"


def apply(path: Path, users: Iterable[Mapping[str, Any]]) -> bool:
    """Bring the file's edgebox lines in step with `users`; whether it changed. The file is
    0600 and its directory 0700 (what sshd's StrictModes asks)."""
    before = path.read_text() if path.exists() else ""
    after = merged(before, users)
    if after == before or (not before and after == "\n"):
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, after.encode(), mode=0o600)
    return True


class UserKeys:
    """What a heartbeat does with the answer's `users`, for the setting in fleet.json."""

    def __init__(self, config: Mapping[str, str]) -> None:
        self.account = config["account"]
        self.path = Path(config["file"])
        self._failed = False

    def update(self, users: object) -> None:
        if not isinstance(users, list):
            return
        try:
            if apply(self.path, [u for u in users if isinstance(u, Mapping)]):
                log.info("hub users' SSH keys updated in %s", self.path)
            self._failed = False
        except OSError as exc:
            if not self._failed:  # once, not every beat
                log.warning("cannot update %s: %s", self.path, exc.strerror)
            self._failed = True
