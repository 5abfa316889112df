"""What every hub route reaches through `request.app.state.hub`: the config, the registry
and the few actions several routes share (rewriting the relay's key files, ending relay
sessions, the membership answer, the heartbeat's cached peer list)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request

from edgebox.api import blob_grant
from edgebox.fleet.hub.limits import Limits
from edgebox.fleet.hub.repository import HubRepository
from edgebox.fleet.node_keys import node_api_key

PEERS_REFRESH_S = 1.0  # heartbeat answers share one read of the node table per second
# what a peer needs of another: its name, address, the keys that match and verify its mDNS
# advert (a public key, which the node proves it holds), models; no telemetry, no secrets
PEER_FIELDS = ("id", "name", "api_url", "host_key", "ssh_public_key", "models", "status")
# the blob registry keeps a node's entries this long after its last beat. Correctness needs
# none of them: only online nodes are named as holders, and a node that comes back lists its
# blobs again in its first beat. The bound only stops the registry growing by up to
# MAX_BEAT_BLOBS rows for every node that ever beat; a week keeps the entries of a box off
# over a weekend or a holiday, for anyone reading the hub's file, at that cost.
BLOB_TTL_S = 7 * 24 * 3600.0


@dataclass
class HubConfig:
    urls: list[str]  # https:// addresses put into tokens
    fingerprint: str
    admin_key: str
    heartbeat_interval: float = 5.0
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 2222
    ssh_user: str = "edgebox-tunnel"
    ssh_host_key: str | None = None  # the relay sshd's public host key, pinned by nodes
    relay_node_keys: Path | None = None  # authorized_keys of the relay's tunnel account
    relay_user_keys: Path | None = None  # authorized_keys of the relay's jump account
    jump_user: str = "edgebox-jump"  # the relay account people log in to
    clock: Callable[[], float] = field(default=time.time)
    limits: Limits = field(default_factory=Limits)
    # Ends the relay sessions holding these tunnel ports (set when the hub runs the relay).
    end_relay_sessions: Callable[[list[int]], object] | None = None
    # derives each node's API key (fleet/node_keys.py); "" derives them from the admin key
    node_key_secret: str = ""
    # the hub's Ed25519 key (its TLS certificate's): signs blob grants (api/blob_grant.py)
    grant_key: Ed25519PrivateKey | None = None

    @property
    def hub_key(self) -> str | None:
        """The public half of `grant_key`, as members keep it to check grants offline."""
        return blob_grant.public_key_text(self.grant_key) if self.grant_key else None

    def blob_grant(self, node_id: str, subject: str) -> str | None:
        """A grant to read `node_id`'s model blobs, for `subject`; None without a key."""
        if self.grant_key is None:
            return None
        return blob_grant.issue(
            self.grant_key,
            hub=self.fingerprint,
            audience=node_id,
            subject=subject,
            now=self.clock(),
        )

    def node_api_key(self, node: dict[str, Any]) -> str:
        """The node's own API key (its `/v1` takes it from routers): derived, never stored."""
        secret = self.node_key_secret or "admin:" + self.admin_key
        return node_api_key(secret, str(node["id"]), int(node.get("api_key_gen") or 0))


@dataclass
class HubContext:
    """The hub app's state: one per app, made by `create_app`."""

    store: HubRepository
    config: HubConfig
    _peers_at: float = -1.0
    _fleet_json: dict[str, bytes] = field(default_factory=dict)
    # node id → the blob digests its last heartbeat listed: read from the registry at start,
    # written back when a beat changes it (`record_blobs`)
    blobs: dict[str, frozenset[str]] = field(default_factory=dict)

    async def load_blobs(self) -> None:
        """The blob registry as the last run left it (the rows of revoked nodes and of nodes
        silent for over BLOB_TTL_S dropped)."""
        await self.forget_stale_blobs()
        self.blobs = await asyncio.to_thread(self.store.blob_map)

    async def forget_stale_blobs(self) -> list[str]:
        """Drop the registry entries of nodes silent for over BLOB_TTL_S; their ids."""
        seen_before = self.now() - BLOB_TTL_S
        gone = await asyncio.to_thread(self.store.forget_blobs, seen_before=seen_before)
        for node_id in gone:
            self.blobs.pop(node_id, None)
        return gone

    async def record_blobs(self, node_id: str, digests: list[str]) -> None:
        """What a beat says `node_id` holds; the registry file is written only on change."""
        held = frozenset(digests)
        if self.blobs.get(node_id) != held:
            await asyncio.to_thread(self.store.set_blobs, node_id, sorted(held))
            self.blobs[node_id] = held

    def blob_holders(self, digest: str) -> list[dict[str, Any]]:
        """The online nodes whose last beat listed `digest`, with their API addresses."""
        holders = [n for n, held in self.blobs.items() if digest in held]
        found = []
        for node in self.store.nodes():
            if node["id"] in holders and node.get("status") == "online" and node.get("api_url"):
                found.append({k: node.get(k) for k in ("id", "name", "api_url")})
        return found

    def now(self) -> float:
        return self.config.clock()

    async def sync_relay(self) -> None:
        """Rewrite the relay's authorized_keys files from the registry (after every change to
        nodes or users; sshd reads them at each login)."""
        await asyncio.to_thread(self._write_relay_files)

    def _write_relay_files(self) -> None:
        from edgebox.fleet.hub.relay_sync import write_node_keys, write_user_keys

        nodes = self.store.nodes()
        if self.config.relay_node_keys is not None:
            write_node_keys(self.config.relay_node_keys, nodes)
        if self.config.relay_user_keys is not None:
            write_user_keys(self.config.relay_user_keys, self.store.users(), nodes)

    async def end_sessions(self, ports: list[int]) -> None:
        """End the relay sessions holding these tunnel ports (only when the hub runs the relay:
        sshd checks keys at login, so a removed key's live session would outlast it)."""
        if self.config.end_relay_sessions is not None:
            await asyncio.to_thread(self.config.end_relay_sessions, ports)

    def relay_info(self) -> dict[str, Any]:
        c = self.config
        return {
            "host": c.ssh_host,
            "port": c.ssh_port,
            "tunnel_user": c.ssh_user,
            "jump_user": c.jump_user,
            "host_key": c.ssh_host_key,
        }

    def membership(self, node: dict[str, Any]) -> dict[str, Any]:
        """The answer to a join or rejoin: what the node saves as its membership."""
        c = self.config
        return {
            "node_id": node["id"],
            "name": node["name"],
            "node_secret": node["node_secret"],
            "tunnel_port": node["tunnel_port"],
            "hub_ssh": {
                "host": c.ssh_host,
                "port": c.ssh_port,
                "user": c.ssh_user,
                "host_key": c.ssh_host_key,
            },
            "heartbeat_interval": c.heartbeat_interval,
            "api_key": c.node_api_key(node),  # the node's own; it serves /v1 with it
            "hub_key": c.hub_key,  # checks the blob grants peers bring (api/blob_grant.py)
        }

    async def fleet_json(self, *, keyed: bool) -> tuple[bytes, bytes]:
        """(peers, users) as JSON for heartbeat answers: the online nodes with an API address
        as a `serve --fleet` router needs them (name, address, host key to match mDNS adverts,
        models; with their API keys when `keyed`, which such a node asks for), and the users'
        SSH public keys (for the nodes' authorized_keys). No telemetry, no other secrets. Read
        and encoded at most once a second, however many nodes beat."""
        if time.monotonic() - self._peers_at >= PEERS_REFRESH_S:
            self._fleet_json = await asyncio.to_thread(self._read_fleet)
            self._peers_at = time.monotonic()
        found = self._fleet_json
        return found["keyed" if keyed else "plain"], found["users"]

    def _read_fleet(self) -> dict[str, bytes]:
        nodes = self.store.nodes()
        online = [r for r in nodes if r.get("status") == "online" and r.get("api_url")]
        # each peer with a grant to read its blobs, shared by every member that beats
        plain = [
            {k: r.get(k) for k in PEER_FIELDS}
            | {"blob_grant": self.config.blob_grant(r["id"], "member")}
            for r in online
        ]
        keyed = [
            p | {"api_key": self.config.node_api_key(r)} for p, r in zip(plain, online, strict=True)
        ]
        users = [
            {"name": u["name"], "ssh_public_key": u["ssh_public_key"]}
            for u in self.store.users()
            if u["ssh_public_key"]
        ]
        return {
            "plain": json.dumps(plain).encode(),
            "keyed": json.dumps(keyed).encode(),
            "users": json.dumps(users).encode(),
        }


def hub_context(request: Request) -> HubContext:
    """The HubContext of the app serving this request."""
    return cast(HubContext, request.app.state.hub)
