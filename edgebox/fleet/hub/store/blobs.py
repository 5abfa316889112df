"""The blob registry: which node's model store holds which blob (sha256), as its last beat said.

Kept in the registry's file (table `node_blobs`) so `GET /v1/hub/blobs/{sha256}` answers after
a hub restart; rows of revoked, removed or long-silent nodes are dropped.
"""

from __future__ import annotations

from edgebox.fleet.hub.store.database import RegistryDatabase


class BlobRecords(RegistryDatabase):
    """The `node_blobs` table: replaced per node, forgotten for silent nodes, read whole."""

    def set_blobs(self, node_id: str, digests: list[str]) -> None:
        """Replace what `node_id` holds (its last beat's list), in one transaction."""
        with self._lock, self._transaction("BEGIN"):
            self._db.execute("DELETE FROM node_blobs WHERE node_id = ?", (node_id,))
            self._db.executemany(
                "INSERT OR IGNORE INTO node_blobs (node_id, digest) VALUES (?, ?)",
                [(node_id, d) for d in digests],
            )

    def forget_blobs(self, *, seen_before: float) -> list[str]:
        """Drop the registry rows of nodes whose last beat is before `seen_before` (or that
        never beat); returns their ids."""
        with self._lock:
            rows = self._db.execute(  # one index probe a node: cheap enough for every sweep
                "SELECT id FROM nodes WHERE COALESCE(last_heartbeat, 0) < ?"
                " AND EXISTS (SELECT 1 FROM node_blobs WHERE node_id = nodes.id)",
                (seen_before,),
            ).fetchall()
            ids = [r[0] for r in rows]
            self._db.executemany("DELETE FROM node_blobs WHERE node_id = ?", [(i,) for i in ids])
        return ids

    def blob_map(self) -> dict[str, frozenset[str]]:
        """Node id → the blobs it holds, for every node not revoked (rows of revoked or
        removed nodes are dropped on the way)."""
        with self._lock:
            self._db.execute(
                "DELETE FROM node_blobs WHERE node_id NOT IN"
                " (SELECT id FROM nodes WHERE revoked_at IS NULL)"
            )
            rows = self._db.execute("SELECT node_id, digest FROM node_blobs").fetchall()
        found: dict[str, set[str]] = {}
        for node_id, digest in rows:
            found.setdefault(node_id, set()).add(digest)
        return {n: frozenset(d) for n, d in found.items()}
