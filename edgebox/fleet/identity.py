"""This node's persistent identity: id, name, its own SSH key and the host-key fingerprint.

Everything lives in EDGEBOX_HOME (default ~/.edgebox) and is created on first use:

    node.json            {"id": ..., "name": ...}
    ssh/id_ed25519       the node's private key (OpenSSH format, mode 0600; never logged)
    ssh/id_ed25519.pub   its public key

mDNS is only a hint; peers pin a node to `host_key_fingerprint`, the SHA256 fingerprint of
this box's sshd host key (what `ssh` shows and checks), or of the edgebox key when sshd's key
is not readable.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgebox.fleet._files import write_atomic

SSHD_HOST_KEY = Path("/etc/ssh/ssh_host_ed25519_key.pub")
# Another sshd host key path, or empty to pin the edgebox key (sshd on a custom HostKey).
SSHD_HOST_KEY_ENV = "EDGEBOX_SSHD_HOST_KEY"


class IdentityError(Exception):
    """The identity files exist but cannot be used; the message says which and what to do."""


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    name: str
    home: Path
    ssh_private_key_path: Path
    ssh_public_key: str  # one OpenSSH line: "ssh-ed25519 AAAA... edgebox@NAME"
    host_key_fingerprint: str  # "SHA256:..." as OpenSSH prints it
    host_key_source: str  # "sshd" or "edgebox"

    def public(self) -> dict[str, Any]:
        """What may be shared with peers (health endpoint, mDNS, the hub): no key material."""
        return {
            "id": self.node_id,
            "name": self.name,
            "ssh_host_key_fingerprint": self.host_key_fingerprint,
            "ssh_host_key_source": self.host_key_source,
        }


def edgebox_home() -> Path:
    """EDGEBOX_HOME, or ~/.edgebox."""
    env = os.environ.get("EDGEBOX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".edgebox"


def ssh_fingerprint(public_key_line: str) -> str:
    """SHA256 fingerprint of an OpenSSH public key line, formatted as `ssh-keygen -l` does."""
    parts = public_key_line.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line (expected 'TYPE BASE64 [COMMENT]')")
    blob = base64.b64decode(parts[1], validate=True)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def load_identity(
    home: Path | None = None, *, sshd_host_key: Path | None = None, name: str | None = None
) -> NodeIdentity:
    """Load this node's identity from `home` (default EDGEBOX_HOME), creating what is missing.

    `name` renames the node (stored); otherwise the stored name, or the hostname at creation.
    Once the box has joined a hub, the name it joined as wins (one node, one name everywhere).
    `sshd_host_key` defaults to $EDGEBOX_SSHD_HOST_KEY, else /etc/ssh/ssh_host_ed25519_key.pub.
    """
    home = home or edgebox_home()
    if sshd_host_key is None:
        env = os.environ.get(SSHD_HOST_KEY_ENV)
        sshd_host_key = SSHD_HOST_KEY if env is None else Path(env) if env else None
    home.mkdir(parents=True, exist_ok=True)
    record = _load_or_create_record(home / "node.json", name)
    private_path, public_line = _load_or_create_key(home / "ssh")
    fingerprint, source = _host_fingerprint(sshd_host_key, public_line)
    return NodeIdentity(
        node_id=record["id"],
        name=_joined_name(home) or record["name"],
        home=home,
        ssh_private_key_path=private_path,
        ssh_public_key=public_line,
        host_key_fingerprint=fingerprint,
        host_key_source=source,
    )


def _load_or_create_record(path: Path, name: str | None) -> dict[str, str]:
    record: dict[str, str] = {}
    if path.exists():
        try:
            record = json.loads(path.read_text())
            if not isinstance(record.get("id"), str) or not isinstance(record.get("name"), str):
                raise ValueError("missing id or name")
        except (ValueError, OSError) as exc:
            raise IdentityError(
                f"{path} is unreadable ({exc}); fix it or delete it to get a new node id"
            ) from None
    changed = not record or (name is not None and name != record.get("name"))
    if not record:
        record = {"id": uuid.uuid4().hex, "name": socket.gethostname() or "edgebox"}
    if name is not None:
        record["name"] = name
    if changed:
        write_atomic(path, (json.dumps(record, indent=2) + "\n").encode(), mode=0o644)
    return record


def _joined_name(home: Path) -> str | None:
    """The name in fleet.json (written by `edgebox join`): the one the hub, `edgebox ssh` and
    the relay know this node by, so /health and mDNS must say it too."""
    try:
        name = json.loads((home / "fleet.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


def _load_or_create_key(ssh_dir: Path) -> tuple[Path, str]:
    private_path, public_path = ssh_dir / "id_ed25519", ssh_dir / "id_ed25519.pub"
    if private_path.exists():
        try:
            key = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as exc:
            # The message never includes the file's content.
            raise IdentityError(
                f"{private_path} is not a readable unencrypted OpenSSH key ({type(exc).__name__})"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{private_path} is not an Ed25519 key")
    else:
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        write_atomic(private_path, pem, mode=0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode() + " edgebox@" + (socket.gethostname() or "node")
    if not public_path.exists():
        write_atomic(public_path, (line + "\n").encode(), mode=0o644)
    return private_path, line


def _host_fingerprint(sshd_host_key: Path | None, own_public_line: str) -> tuple[str, str]:
    if sshd_host_key is not None:
        try:
            return ssh_fingerprint(sshd_host_key.read_text()), "sshd"
        except (OSError, ValueError):
            pass
    return ssh_fingerprint(own_public_line), "edgebox"
