"""What the hub's routes need of its registry, as a `typing.Protocol`.

The routes and the offline sweeper depend on `HubRepository`, not on SQLite: `store.HubStore`
is the implementation the hub runs, and anything with these methods (an in-memory fake in a
test, another database) can stand in. The methods are synchronous and may block on disk; the
routes call them through `asyncio.to_thread`. Node, token, user and event records are plain
dicts shaped as the HTTP API returns them (docs/architecture.md, "Hub HTTP API").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class JoinRefused(Exception):
    """A join or rejoin the registry refuses: the HTTP status and error code to answer with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Registration:
    """What a joining node tells the hub about itself."""

    name: str | None
    ssh_public_key: str
    host_key: str | None
    profile: dict[str, Any]
    models: list[Any]


class HubRepository(Protocol):
    """The registry operations the hub's routes and sweeper use."""

    # join tokens
    def create_token(self, *, ttl: float, name: str | None, now: float) -> tuple[str, str, float]:
        """A new token: (id, secret, expires_at); the secret is never readable again."""
        ...

    def list_tokens(self, now: float) -> list[dict[str, Any]]: ...

    def revoke_token(self, token_id: str, now: float) -> bool:
        """False when no unrevoked token has this id."""
        ...

    # nodes
    def redeem(self, token_id: str, secret: str, reg: Registration, now: float) -> dict[str, Any]:
        """Consume the token and register a new node, atomically; the node carries its
        `node_secret`. Raises JoinRefused."""
        ...

    def rejoin(self, body: dict[str, Any], hub: str, now: float) -> dict[str, Any]:
        """Re-register the node whose key signed `body`; the node carries a new `node_secret`
        and `old_key` (the replaced key, or None). Raises JoinRefused."""
        ...

    def heartbeat(
        self,
        node_secret: str,
        telemetry: dict[str, Any],
        models: list[Any],
        now: float,
        api_url: str | None = None,
        ssh_user: str | None = None,
    ) -> dict[str, Any] | None:
        """Record a beat from the live node holding this secret; None when none does (the
        secret is checked in the same step as the write, so a revocation cannot slip between)."""
        ...

    def mark_offline(self, *, older_than: float, now: float) -> list[str]:
        """Online nodes silent since `older_than` become offline; returns their ids."""
        ...

    def revoke_node(self, key: str, now: float) -> dict[str, Any] | None: ...

    def nodes(self) -> list[dict[str, Any]]: ...

    def node(self, key: str) -> dict[str, Any] | None:
        """The node with this id or name (a live one before a revoked one), or None."""
        ...

    # the blob registry
    def set_blobs(self, node_id: str, digests: list[str]) -> None:
        """Replace the model blobs (sha256) `node_id` holds."""
        ...

    def forget_blobs(self, *, seen_before: float) -> list[str]:
        """Drop what nodes whose last beat is before `seen_before` hold; returns their ids."""
        ...

    def blob_map(self) -> dict[str, frozenset[str]]:
        """Node id → the blobs it holds, for nodes not revoked."""
        ...

    # users
    def add_user(self, name: str, ssh_public_key: str, now: float) -> str:
        """Add or replace a user; returns their new read token (never readable again)."""
        ...

    def set_user_key(self, name: str, ssh_public_key: str, now: float) -> None:
        """Replace a user's SSH key ("" before they registered one)."""
        ...

    def remove_user(self, name: str, now: float) -> bool: ...

    def users(self) -> list[dict[str, Any]]: ...

    def user_for_token(self, token: str) -> str | None:
        """The user holding this read token, or None."""
        ...

    # audit
    def events(self, limit: int = 100) -> list[dict[str, Any]]: ...
