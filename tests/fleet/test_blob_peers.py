"""Which credential a pull sends each peer: a hub peer's blob grant before its API key before
the node's own key, and the grant the latest heartbeat brought, so a pull that outlasts one
grant keeps its peers."""

from __future__ import annotations

from typing import Any

from edgebox.fleet.blob_peers import PeerFinder, hub_candidates

DIGEST = "ab" * 32


def test_a_hub_peer_gets_its_grant_before_its_key_before_the_shared_one() -> None:
    peers = [
        {"api_url": "http://10.0.0.1:8080", "blob_grant": "ebg1.g1", "api_key": "ebk_1"},
        {"api_url": "http://10.0.0.2:8080", "api_key": "ebk_2"},
        {"api_url": "http://10.0.0.3:8080", "blob_grant": ""},
        {"api_url": "ftp://10.0.0.4"},
        {"name": "no address"},
    ]
    found = [(p.url, p.key) for p in hub_candidates(peers, "shared")]
    assert found == [
        ("http://10.0.0.1:8080", "ebg1.g1"),
        ("http://10.0.0.2:8080", "ebk_2"),
        ("http://10.0.0.3:8080", "shared"),
    ]


def test_a_pull_sends_the_grant_of_the_latest_heartbeat() -> None:
    beat: list[dict[str, Any]] = [{"api_url": "http://10.0.0.1:8080", "blob_grant": "ebg1.old"}]
    finder = PeerFinder(lambda: beat, own_id="me", key="shared", mdns=False)
    (peer,) = finder()
    source = peer.blob_source(DIGEST)
    assert source.request_headers() == {"Authorization": "Bearer ebg1.old"}
    beat[0] = {"api_url": "http://10.0.0.1:8080", "blob_grant": "ebg1.new"}  # the next beat
    assert source.request_headers() == {"Authorization": "Bearer ebg1.new"}
    beat.clear()  # the hub stopped listing it: the last key the pull started with
    assert source.request_headers() == {"Authorization": "Bearer ebg1.old"}
    assert "ebg1" not in repr(peer) + repr(source)  # a traceback shows no credential
