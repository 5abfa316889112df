"""Which credential a pull sends each peer: a hub peer's blob grant before its API key before
the node's own key, and the grant the latest heartbeat brought (on a laptop: the hub, asked
again every few minutes), so a pull that outlasts one grant keeps its peers."""

from __future__ import annotations

from typing import Any

from edgebox.fleet.blob_peers import GRANT_REFRESH_S, HubGrants, PeerFinder, hub_candidates
from edgebox.fleet.hub.client import HubError
from edgebox.fleet.hub_access import HubAccess

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


class _Answers(HubGrants):
    """The hub's answers to `GET /v1/hub/blob-grants`, in order, on a clock the test moves."""

    def __init__(self, answers: list[dict[str, str] | HubError]) -> None:
        self.now = 0.0
        access = HubAccess("https://hub.test:8443", "sha256:" + "ab" * 32, "ebu_t", "test")
        super().__init__(access, clock=lambda: self.now)
        self.answers, self.asked = answers, 0

    def fetch(self) -> dict[str, str]:
        answer = self.answers[self.asked]
        self.asked += 1
        if isinstance(answer, HubError):
            raise answer
        self._grants, self._at = answer, self.clock()
        return answer


def test_a_laptop_pull_renews_its_grants_while_it_runs() -> None:
    url = "http://10.0.0.1:8080"
    hub = _Answers([{url: "ebg1.first"}, {url: "ebg1.second"}, HubError(503, "down", "down")])
    hub.fetch()
    (peer,) = hub.peers()
    source = peer.blob_source(DIGEST)
    hub.now = GRANT_REFRESH_S - 1  # every chunk until then: no call to the hub
    assert source.request_headers()["Authorization"] == "Bearer ebg1.first" and hub.asked == 1
    hub.now = GRANT_REFRESH_S
    assert source.request_headers()["Authorization"] == "Bearer ebg1.second" and hub.asked == 2
    hub.now = 2 * GRANT_REFRESH_S  # the hub does not answer: the last grant, asked again later
    assert source.request_headers()["Authorization"] == "Bearer ebg1.second" and hub.asked == 3
    assert source.request_headers()["Authorization"] == "Bearer ebg1.second" and hub.asked == 3
