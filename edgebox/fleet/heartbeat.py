"""The node's heartbeat to its hub: telemetry and models every few seconds, over pinned HTTPS.

Each beat also says where the node's OpenAI API listens (`api`: port, scheme, and whether it
is bound to loopback only); the hub pairs the port with the address it sees the beat come from.
Authenticated by the per-node secret the hub issued at join (bearer, stored 0600 in
fleet.json; the hub keeps its sha256). A failed beat is logged without secrets and retried at
the next tick; the hub marks the node offline after three missed beats.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgebox.api.blob_grant import GrantVerifier
from edgebox.api.netguard import log_field
from edgebox.fleet.hub.client import HubClient, HubError
from edgebox.fleet.join import load_fleet

log = logging.getLogger("edgebox.heartbeat")

TelemetrySource = Callable[[], dict[str, Any]]
ModelsSource = Callable[[], list[Any]]
BlobsSource = Callable[[], list[str]]
MAX_BEAT_BLOBS = 1024  # the hub's bound on digests per beat


def box_telemetry() -> dict[str, Any]:
    """This box now (CPU, memory, load, accelerators) from edgebox.hardware.telemetry."""
    from edgebox.hardware import telemetry

    return telemetry.sample().to_dict()


class Heartbeat:
    """Beats until stopped; `run()` blocks, `start()` runs it on a daemon thread."""

    def __init__(
        self,
        fleet: dict[str, Any],
        *,
        interval: float | None = None,
        telemetry: TelemetrySource = box_telemetry,
        models: ModelsSource = list,
        api: dict[str, Any] | None = None,
        peer_keys: bool = False,
        blobs: BlobsSource = list,
        grants: GrantVerifier | None = None,
    ) -> None:
        from edgebox.fleet.user_keys import UserKeys

        self.fleet = fleet
        self.api = api
        self.peer_keys = peer_keys  # ask for the peers' API keys (a `serve --fleet` node)
        setting = fleet.get("user_keys")
        self.user_keys = UserKeys(setting) if setting else None
        self.interval = interval or float(fleet.get("heartbeat_interval", 5.0))
        self.telemetry, self.models, self.blobs = telemetry, models, blobs
        self.grants = grants  # learns the hub's key from an answer when fleet.json has none
        self.sent = 0
        # The hub's other online nodes, from its last answer (`serve --fleet` routes to them).
        self.peers: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, client: HubClient) -> dict[str, Any]:
        body: dict[str, Any] = {"telemetry": self.telemetry(), "models": self.models()}
        if self.api is not None:
            body["api"] = self.api
        if self.user_keys is not None:
            body["ssh_user"] = self.user_keys.account
        if self.peer_keys:
            body["peer_keys"] = True
        blobs = self.blobs()[:MAX_BEAT_BLOBS]
        if blobs:
            body["blobs"] = blobs
        answer: dict[str, Any] = client.request(
            "POST", "/v1/hub/heartbeat", json=body, bearer=self.fleet["node_secret"]
        )
        self.sent += 1
        peers = answer.get("peers")
        if isinstance(peers, list):  # every online node; this one left out here
            me = self.fleet.get("node_id")
            self.peers = [p for p in peers if isinstance(p, dict) and p.get("id") != me]
        if self.user_keys is not None:
            self.user_keys.update(answer.get("users"))
        hub_key = answer.get("hub_key")
        if self.grants is not None and not self.grants.hub_key and isinstance(hub_key, str):
            self.grants.hub_key = hub_key  # over the pinned connection: the hub's own
        return answer

    @property
    def hub_url(self) -> str:
        urls = self.fleet.get("hub_urls") or [""]
        return str(urls[0])

    def run(self, *, count: int | None = None) -> bool:
        """Beat until stopped, or `count` attempts; whether the last attempt was answered."""
        answered, attempts = False, 0
        with HubClient(self.fleet["hub_urls"], self.fleet["hub_fingerprint"], timeout=5) as hub:
            while not self._stop.is_set():
                started = time.monotonic()
                attempts += 1
                try:
                    self.beat(hub)
                    answered = True
                except HubError as exc:
                    answered = False
                    log.warning("heartbeat to hub failed: %s", log_field(exc.message))
                if count is not None and attempts >= count:
                    break
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        return answered

    def start(self) -> Heartbeat:
        self._thread = threading.Thread(target=self.run, name="edgebox-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)


def api_endpoint(port: int, *, loopback_only: bool, scheme: str = "http") -> dict[str, Any] | None:
    """The `api` part of a beat for a node listening on `port` (None for an OS-chosen port 0)."""
    if port <= 0:
        return None
    return {"port": port, "scheme": scheme, "loopback_only": loopback_only}


def start_background(
    home: Path | None = None,
    *,
    models: ModelsSource = list,
    api: dict[str, Any] | None = None,
    peer_keys: bool = False,
    blobs: BlobsSource = list,
    grants: GrantVerifier | None = None,
) -> Heartbeat | None:
    """Start heartbeats when this box has joined a hub (EDGEBOX_HOME/fleet.json); else None.
    `peer_keys`: ask for the peers' API keys (a node that routes to them, `serve --fleet`)."""
    fleet = load_fleet(home)
    if fleet is None:
        return None
    beats = Heartbeat(
        fleet, models=models, api=api, peer_keys=peer_keys, blobs=blobs, grants=grants
    )
    return beats.start()
