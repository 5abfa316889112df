"""What a node says about itself over mDNS, and what a browser makes of it (pure).

The TXT record stays small (each entry well under 255 bytes) and public: protocol version,
node id, name, SSH host-key fingerprint, API port, accelerator class and a digest of the served
model names. Never tokens or keys. mDNS is a hint: peers pin a node to its fingerprint.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

SERVICE_TYPE = "_edgebox._tcp.local."
PROTOCOL_VERSION = 1
_MAX_ENTRY = 255
_MAX_NAME = 40


@dataclass(frozen=True)
class DiscoveredNode:
    node_id: str
    name: str
    addresses: tuple[str, ...]
    api_port: int | None  # None: the node's API listens on loopback only
    host_key_fingerprint: str
    accelerator: str
    model_digest: str
    protocol_version: int
    service_name: str  # the mDNS instance name, e.g. "spark-1a2b3c4d._edgebox._tcp.local."
    txt: tuple[tuple[str, str], ...] = ()  # the whole TXT record as received, keys sorted

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.node_id,
            "name": self.name,
            "addresses": list(self.addresses),
            "api_port": self.api_port,
            "ssh_host_key_fingerprint": self.host_key_fingerprint,
            "accelerator": self.accelerator,
            "model_digest": self.model_digest,
            "protocol_version": self.protocol_version,
            "txt": dict(self.txt),
        }


@dataclass(frozen=True)
class NodeEvent:
    kind: Literal["added", "updated", "removed"]
    node: DiscoveredNode


def model_digest(names: Iterable[str]) -> str:
    """12 hex characters naming the set of served models (order does not matter)."""
    return hashlib.sha256("\n".join(sorted(set(names))).encode()).hexdigest()[:12]


def instance_name(name: str, node_id: str) -> str:
    """A DNS-SD instance label unique per node: the readable name plus the id's first 8 chars."""
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:_MAX_NAME] or "edgebox"
    return f"{clean}-{node_id[:8]}"


def distinct_names(nodes: Sequence[DiscoveredNode]) -> list[str]:
    """The name to show and key each node by, in order: its own name; when nodes with other
    ids share it (cloned images all called `ubuntu` or `raspberrypi`), that name plus the id's
    first 8 characters, as in its mDNS instance name; when even that repeats (two adverts
    claiming one identity, at most one of them genuine), plus `@` and its mDNS instance
    name, which mDNS keeps unique. Identity is the node
    id, never the name, and a copied identity must not hide the node it copies."""
    ids_by_name: dict[str, set[str]] = {}
    for node in nodes:
        ids_by_name.setdefault(node.name, set()).add(node.node_id)
    names = [
        node.name if len(ids_by_name[node.name]) == 1 else f"{node.name}-{node.node_id[:8]}"
        for node in nodes
    ]
    counts = Counter(names)
    return [
        name if counts[name] == 1 else f"{name}@{node.service_name.split('._edgebox', 1)[0]}"
        for name, node in zip(names, nodes, strict=True)
    ]


def txt_properties(
    *,
    node_id: str,
    name: str,
    host_key_fingerprint: str,
    api_port: int | None,
    accelerator: str,
    models: Sequence[str],
) -> dict[str, str]:
    """The TXT record of a node; `api_port` None leaves `api` out (API on loopback only)."""
    props = {
        "v": str(PROTOCOL_VERSION),
        "id": node_id,
        "name": name[:_MAX_NAME],
        "fp": host_key_fingerprint,
        "acc": accelerator,
        "md": model_digest(models),
    }
    if api_port is not None:
        props["api"] = str(api_port)
    for key, value in props.items():
        if len(key) + 1 + len(value.encode()) >= _MAX_ENTRY:
            raise ValueError(f"TXT entry {key!r} is too long for mDNS")
    return props


def parse_advert(
    service_name: str,
    properties: Mapping[bytes, bytes | None],
    addresses: Sequence[str],
) -> DiscoveredNode | None:
    """A DiscoveredNode from a resolved service, or None when it is not a node we can use
    (another protocol version, or a record missing its id or fingerprint)."""
    props = {_text(k): _text(v) for k, v in properties.items() if v is not None}
    try:
        version = int(props.get("v", ""))
    except ValueError:
        return None
    if version != PROTOCOL_VERSION or not props.get("id") or not props.get("fp"):
        return None
    api = props.get("api", "")
    return DiscoveredNode(
        node_id=props["id"],
        name=props.get("name") or service_name.split(".", 1)[0],
        addresses=tuple(addresses),
        api_port=int(api) if api.isdigit() and 0 < int(api) < 65536 else None,
        host_key_fingerprint=props["fp"],
        accelerator=props.get("acc", "unknown"),
        model_digest=props.get("md", ""),
        protocol_version=version,
        service_name=service_name,
        txt=tuple(sorted(props.items())),
    )


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")
