"""What blob grants and the persisted blob registry cost, side by side with what they replace.

- node: checking a grant (Ed25519 verify + claims the first time, a lookup after) against
  checking an API key (constant-time compare), per request to a blob route;
- hub: building the heartbeat's peer list for N online nodes with a grant per peer against
  without (done at most once a second, shared by every beat);
- hub: a beat that changes a node's blob list (1,024 digests rewritten) against one that does
  not (nothing written), and reading the whole registry back at start.

    PYTHONPATH=. python benchmarks/bench_blob_grant.py --nodes 200
"""

from __future__ import annotations

import argparse
import hmac
import os
import platform
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgebox.api import blob_grant
from edgebox.fleet.hub.context import HubConfig, HubContext
from edgebox.fleet.hub.repository import Registration
from edgebox.fleet.hub.store import HubStore

HUB = "sha256:" + "ab" * 32


def per_call(fn: Callable[[], object], seconds: float = 1.0) -> float:
    """Microseconds per call, over about `seconds`."""
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(50):
            fn()
        n += 50
    return (time.perf_counter() - started) / n * 1e6


def node_side() -> None:
    key = Ed25519PrivateKey.generate()
    grant = blob_grant.issue(key, hub=HUB, audience="node-a", subject="member", now=time.time())
    verifier = blob_grant.GrantVerifier(HUB, "node-a", blob_grant.public_key_text(key))
    api_key = b"ebk_" + secrets.token_urlsafe(32).encode()
    first_us = per_call(lambda: verifier._verify(grant))  # a grant the node has not seen
    again_us = per_call(lambda: verifier.check(grant))  # the same grant, next chunk
    key_us = per_call(lambda: hmac.compare_digest(api_key, api_key))
    print(
        f"node: grant check {first_us:.1f} us the first time, {again_us:.2f} us again; "
        f"API key compare {key_us:.2f} us per request"
    )


def _registry(path: Path, nodes: int) -> tuple[HubStore, list[str]]:
    store = HubStore(path)
    ids = []
    for i in range(nodes):
        token_id, secret, _ = store.create_token(ttl=600, name=None, now=time.time())
        key = f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{i:08d} n{i}"
        node = store.redeem(token_id, secret, Registration(f"n{i}", key, None, {}, []), time.time())
        store.heartbeat(node["node_secret"], {}, [], time.time(), f"http://10.0.{i}.1:8080")
        ids.append(node["id"])
    return store, ids


def hub_side(nodes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store, ids = _registry(Path(tmp) / "hub.sqlite3", nodes)
        plain = HubContext(store, HubConfig(["https://h:1"], HUB, "admin"))
        keyed = HubContext(
            store, HubConfig(["https://h:1"], HUB, "admin", grant_key=Ed25519PrivateKey.generate())
        )
        without = per_call(plain._read_fleet) / 1000
        with_grants = per_call(keyed._read_fleet) / 1000
        print(
            f"hub: peer list of {nodes} nodes {without:.1f} ms without grants, "
            f"{with_grants:.1f} ms with ({with_grants / without:.2f}x; once a second at most)"
        )
        digests = [secrets.token_hex(32) for _ in range(1024)]
        changed = per_call(
            lambda: store.set_blobs(ids[0], [*digests[:1023], secrets.token_hex(32)])
        )
        print(f"hub: a beat that changes 1,024 digests writes them in {changed / 1000:.1f} ms")
        for node_id in ids:
            store.set_blobs(node_id, digests)
        load = per_call(store.blob_map, 2.0) / 1000
        print(f"hub: reading {nodes} x 1,024 registry rows at start: {load:.0f} ms")
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=200)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}"
    )
    node_side()
    hub_side(args.nodes)


if __name__ == "__main__":
    main()
