"""Nodes added by hand (`edgebox nodes add`), kept in EDGEBOX_HOME/nodes.json.

For boxes mDNS cannot see (another subnet, a VPN, a container). Writes are atomic (temp file
and rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgebox.api.health import HealthReport
from edgebox.fleet._files import write_atomic
from edgebox.fleet.identity import edgebox_home

DEFAULT_PORT = 8080


class KnownNodesError(Exception):
    """nodes.json cannot be read or a lookup failed; the message says what to do."""


@dataclass(frozen=True)
class KnownNode:
    node_id: str
    name: str
    host: str
    port: int
    host_key_fingerprint: str
    added_at: float

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_host_port(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """`HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT` → (host, port)."""
    text = text.strip()
    host, port = text, str(default_port)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected [ADDRESS]:PORT, got {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise ValueError(f"no host in {text!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1-65535, got {port!r}")
    return host, int(port)


class KnownNodes:
    """The JSON-backed store; every method reads the file, so several processes can share it."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or edgebox_home() / "nodes.json"

    def all(self) -> list[KnownNode]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text())
            return [KnownNode(**entry) for entry in data["nodes"]]
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise KnownNodesError(f"{self.path} is unreadable ({exc}); fix or delete it") from None

    def add(self, node: KnownNode) -> None:
        """Add or replace (same node id) a node."""
        nodes = [n for n in self.all() if n.node_id != node.node_id]
        self._save([*nodes, node])

    def remove(self, name_or_id: str) -> KnownNode:
        """Remove the node with this id, id prefix (8+ chars) or unique name."""
        node = self.find(name_or_id)
        self._save([n for n in self.all() if n.node_id != node.node_id])
        return node

    def find(self, name_or_id: str) -> KnownNode:
        nodes = self.all()
        matches = [n for n in nodes if n.node_id == name_or_id]
        matches = matches or [n for n in nodes if n.name == name_or_id]
        if not matches and len(name_or_id) >= 8:
            matches = [n for n in nodes if n.node_id.startswith(name_or_id)]
        if not matches:
            raise KnownNodesError(f"no added node is named or has id {name_or_id!r}")
        if len(matches) > 1:
            ids = ", ".join(n.node_id for n in matches)
            raise KnownNodesError(f"{name_or_id!r} names several nodes ({ids}); use the id")
        return matches[0]

    def _save(self, nodes: list[KnownNode]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, "nodes": [asdict(n) for n in nodes]}
        write_atomic(self.path, (json.dumps(data, indent=2) + "\n").encode())


def known_node_from_health(
    host: str, port: int, health: dict[str, object], now: float | None = None
) -> KnownNode:
    """A KnownNode from a node's /health answer; raises KnownNodesError when it has no identity."""
    node = HealthReport.parse(health).node
    if node is None or not node.id or not node.ssh_host_key_fingerprint:
        raise KnownNodesError(
            f"{host}:{port} answered /health without a node identity; is it an edgebox node "
            "new enough to have one?"
        )
    return KnownNode(
        node_id=node.id,
        name=node.name or host,
        host=host,
        port=port,
        host_key_fingerprint=node.ssh_host_key_fingerprint,
        added_at=time.time() if now is None else now,
    )
