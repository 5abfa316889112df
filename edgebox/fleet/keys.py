"""This box's node identity: an Ed25519 key pair kept in EDGEBOX_HOME, created on first use.

The private key never leaves the box; the hub learns only the OpenSSH public key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_FILE = "node_ed25519"


def edgebox_home() -> Path:
    """EDGEBOX_HOME, default ~/.edgebox."""
    return Path(os.environ.get("EDGEBOX_HOME") or Path.home() / ".edgebox")


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, created 0600 from the start (no window)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


@dataclass(frozen=True)
class NodeKey:
    private_path: Path
    public_openssh: str  # "ssh-ed25519 AAAA... edgebox-node"


def load_or_create(home: Path | None = None) -> NodeKey:
    """The node's key pair (OpenSSH formats, usable by ssh and asyncssh alike)."""
    home = home or edgebox_home()
    path = home / KEY_FILE
    if path.exists():
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 key")
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        write_private(path, pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    pub_line = public.decode() + " edgebox-node"
    (home / (KEY_FILE + ".pub")).write_text(pub_line + "\n")
    return NodeKey(private_path=path, public_openssh=pub_line)
