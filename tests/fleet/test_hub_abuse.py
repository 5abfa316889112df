"""Abuse limits at a real hub process on loopback (issue 15, findings 4, 5 and the hub's part
of 10): join spam is rate-limited per source with 429 and the database stays small; client
text reaches the log escaped; slow and idle connections are closed while others are served.

Other source addresses are other loopback addresses (127.0.0.2, 127.0.0.3): Linux routes all
of 127.0.0.0/8 to lo.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgebox.fleet import tokens
from edgebox.fleet.hub.client import pinned_context
from edgebox.fleet.join import join
from tests.conftest import free_port
from tests.fleet.test_hub import PROFILE, Hub


def _client(hub: Hub, source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(
        verify=pinned_context(hub.info["fingerprint"]), local_address=source
    )
    return httpx.Client(transport=transport, base_url=hub.info["urls"][0], timeout=10)


def _db_bytes(hub: Hub) -> int:
    return sum(p.stat().st_size for p in hub.data.glob("hub.sqlite3*"))


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log", interval=30)
    h.start()
    yield h
    h.stop()


def test_join_spam_gets_429_after_the_burst_and_the_database_stays_small(hub: Hub) -> None:
    bad = {
        "token_id": "tok_000000000000",
        "secret": "wrong",
        "profile": {},
        "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbuse x",
    }
    before = _db_bytes(hub)
    statuses: list[int] = []
    started = time.monotonic()
    with _client(hub, "127.0.0.2") as spammer:
        for i in range(1000):
            resp = spammer.post("/v1/hub/join", json=bad | {"token_id": f"tok_{i:012x}"})
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                limited = resp
    took = time.monotonic() - started
    after = _db_bytes(hub)
    print(
        f"1000 bad redeems in {took:.1f} s: {statuses.count(401)} x 401, "
        f"{statuses.count(429)} x 429; database {before} -> {after} bytes"
    )
    assert statuses[:20] == [401] * 20  # the burst
    assert statuses.count(429) >= 1000 - 20 - int(took) - 2  # then about 1 a second
    assert limited.headers["retry-after"].isdigit() and int(limited.headers["retry-after"]) >= 1
    error = limited.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
    assert after - before < 256 * 1024  # write-ahead log pages, mostly; 4.3 MB before the fix
    refused = [e for e in hub.get("/v1/hub/events")["data"] if e["kind"] == "join_refused"]
    assert len(refused) == 1 and refused[0]["count"] == statuses.count(401)
    # Another address is served as before, and so is /health from the spamming one.
    with _client(hub, "127.0.0.3") as other:
        assert other.get("/health").status_code == 200
    with _client(hub, "127.0.0.2") as spammer:
        assert spammer.get("/health").status_code == 200
    join(hub.token()["token"], home=hub.data.parent / "n", profile=PROFILE)


def test_bad_keys_are_rate_limited_but_a_good_key_still_works(hub: Hub) -> None:
    with _client(hub, "127.0.0.2") as guesser:
        codes = [
            guesser.get("/v1/hub/nodes", headers={"authorization": f"Bearer guess{i}"}).status_code
            for i in range(40)
        ]
    assert codes[:30] == [401] * 30 and codes[-1] == 429
    assert hub.get("/v1/hub/nodes")["object"] == "list"  # the admin, from 127.0.0.1


def test_client_text_reaches_the_log_escaped(hub: Hub) -> None:
    forged = "2026-01-01 00:00:00 edgebox.hub INFO node node_f (x) joined"
    bad_id = "tok_\n" + forged + "\x1b[2J\r"
    with _client(hub, "127.0.0.2") as client:
        refused = client.post(
            "/v1/hub/join",
            json={
                "token_id": bad_id,
                "secret": "s",
                "ssh_public_key": "ssh-ed25519 AAAAC3Nz x",
                "profile": {},
            },
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "token_id"
        made = tokens.parse(hub.token()["token"])
        body = {
            "token_id": made.token_id,
            "secret": made.secret,
            "profile": {"hostname": "box\n" + forged + "\x1b]0;owned\x07"},
            "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEsc x",
        }
        joined = client.post("/v1/hub/join", json=body)
        assert joined.status_code == 201, joined.text
        assert "\n" not in joined.json()["name"] and "\x1b" not in joined.json()["name"]
    hub.stop()
    from edgebox.api.netguard import log_field

    log = hub.log.read_bytes()
    assert b"\x1b" not in log and b"\r" not in log and b"\x07" not in log
    assert not any(line.startswith(b"2026-01-01") for line in log.splitlines())
    assert json.loads(json.dumps(log_field(bad_id))) == (
        "tok_\\n" + forged + "\\x1b[2J\\r"
    )  # what the escaping makes of such text
    assert log_field("a" * 300).endswith("…") and log_field("\u202ex") == "\\u202ex"


def test_idle_and_trickling_connections_are_closed_and_others_served(tmp_path: Path) -> None:
    hub = Hub(
        tmp_path / "hub",
        free_port(),
        tmp_path / "hub.log",
        interval=30,
        extra=("--header-timeout", "2", "--max-conns-per-address", "150"),
    )
    hub.start()
    sockets: list[socket.socket] = []
    stop = threading.Event()
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        for i in range(200):  # idle TCP (no TLS hello) and TLS connections trickling headers
            raw = socket.create_connection(("127.0.0.1", hub.port), source_address=("127.0.0.2", 0))
            if i % 2:
                try:
                    raw = ctx.wrap_socket(raw)
                    raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                except (OSError, ssl.SSLError):  # over the cap: closed before the handshake
                    pass
            sockets.append(raw)
        opened = time.monotonic()

        def trickle() -> None:
            while not stop.wait(0.5):
                for s in sockets[1::2]:
                    with contextlib.suppress(OSError, ssl.SSLError, ValueError):
                        s.sendall(b"X")

        threading.Thread(target=trickle, daemon=True).start()
        with _client(hub, "127.0.0.1") as normal:  # another address is served meanwhile
            started = time.monotonic()
            assert normal.get("/health").status_code == 200
            assert time.monotonic() - started < 3
        closed = _wait_all_closed(sockets, timeout=8)
        print(
            f"200 slow connections: all closed {time.monotonic() - opened:.1f} s after "
            f"opening ({closed} seen closed)"
        )
        assert closed == len(sockets)
        with _client(hub, "127.0.0.2") as again:  # the address is welcome once it behaves
            assert again.get("/health").status_code == 200
    finally:
        stop.set()
        for s in sockets:
            s.close()
        hub.stop()


def _wait_all_closed(sockets: list[socket.socket], timeout: float) -> int:
    """Wait until the server has closed every socket (hang-up or reset seen by poll; no read,
    so the trickling thread keeps sole use of the TLS objects)."""
    gone = select.POLLHUP | select.POLLERR | select.POLLRDHUP | select.POLLNVAL
    poller = select.poll()
    for s in sockets:
        poller.register(s.fileno(), gone)
    open_ = {s.fileno() for s in sockets}
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        for fd, events in poller.poll(100):
            if events & gone and fd in open_:
                open_.discard(fd)
                poller.unregister(fd)
    return len(sockets) - len(open_)
