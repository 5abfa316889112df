"""`edgebox pull` on a logged-in laptop asks only the hub nodes that the hub's blob registry
says hold the model, when its digest is known up front (pure: the registry is a function)."""

from __future__ import annotations

from edgebox.commands.pull import holders_only
from edgebox.models.transfer import Peer

A, B, MINE = "http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.9:8080"
DIGEST = "ab" * 32


def peers() -> list[Peer]:
    return [Peer(MINE, "k"), Peer(A, "grant-a"), Peer(B, "grant-b")]


def test_only_the_holders_among_the_hub_nodes_are_asked() -> None:
    asked: list[list[str]] = []

    def registry(digests: list[str]) -> set[str] | None:
        asked.append(digests)
        return {B}

    kept = holders_only(peers(), {A, B}, [DIGEST], registry)
    assert [p.url for p in kept] == [MINE, B]  # a --peer is kept whatever the hub says
    assert asked == [[DIGEST]]
    nobody = holders_only(peers(), {A, B}, [DIGEST], lambda _: set())
    assert [p.url for p in nobody] == [MINE]  # no holder: the internet, not every node


def test_every_node_is_asked_when_the_digest_or_the_registry_is_unknown() -> None:
    def never(_: list[str]) -> set[str] | None:
        raise AssertionError("the hub is asked only with every digest known")

    everyone = [MINE, A, B]
    assert [p.url for p in holders_only(peers(), {A, B}, [DIGEST, ""], never)] == everyone
    assert [p.url for p in holders_only(peers(), {A, B}, [], never)] == everyone
    assert [p.url for p in holders_only(peers(), set(), [DIGEST], never)] == everyone
    # the hub is out of reach or older than the registry
    assert [p.url for p in holders_only(peers(), {A, B}, [DIGEST], lambda _: None)] == everyone
