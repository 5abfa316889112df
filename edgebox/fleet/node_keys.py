"""Per-node API keys: the key a joined node takes on /v1 from the fleet's routers.

Each node gets its own key, so a key read off one box opens that box only. The hub does not
store the keys: it derives them, HMAC-SHA256 over the node id and a generation number with a
secret kept 0600 in its data dir (`node-keys.secret`), so a copy of the registry file gives
no key away. The node receives its key in the hub's answer to join and rejoin and keeps it in
fleet.json (0600); routers get the keys of the nodes they may use from the hub over an
authenticated call (a user login: `GET /v1/hub/node-keys`; a `serve --fleet` node: its
heartbeat answer). `edgebox node rejoin --rotate-key` bumps the generation: a new key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

from edgebox.fleet._files import write_atomic

PREFIX = "ebk_"
SECRET_FILE = "node-keys.secret"
_LABEL = b"edgebox-node-api-key-v1"


def node_api_key(secret: str, node_id: str, generation: int) -> str:
    """The API key of `node_id` at `generation` (pure; the same inputs give the same key)."""
    message = b"%s:%s:%d" % (_LABEL, node_id.encode(), generation)
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def load_or_create_secret(data_dir: Path) -> str:
    """The hub's node-key secret (DATA/node-keys.secret, 0600), made on first start."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        write_atomic(path, (secrets.token_urlsafe(32) + "\n").encode(), mode=0o600)
    return path.read_text().strip()
