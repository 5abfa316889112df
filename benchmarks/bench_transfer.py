"""Peer model transfer: throughput as a fraction of the link, and 3 nodes fed P2P vs from the
"internet".

Namespaces on a bridge (tests/netns.py; root and iproute2). The sender's egress is shaped
with `tc tbf` to --link-mbit (a LAN). Raw TCP (a Python socket sender/receiver) vs a node
pulling the model from a peer node (`POST /admin/models/pull`), same link, same run; also the
raw stream kept as a pull keeps it (hashed and written: what the box allows a verified transfer).
Then the model onto 3 nodes: each pulling it from an "internet" file server whose egress is
shaped to --internet-mbit, vs one node pulling it from there and the other two from that node.
The model is the bundled Gemma 3 270M GGUF (253 MB), or --model; --peer-only stops after the
first part.

    sudo PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_transfer.py [--peer-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.models.test_peer_transfer import ADMIN, Lan  # noqa: E402
from tests.netns import NetnsLab  # noqa: E402

RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9400)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0; t = None
while (b := c.recv(1 << 20)):
    t = t or time.monotonic(); n += len(b)
print(n, time.monotonic() - t, flush=True)
"""
# The same stream kept as a pull keeps it, with no HTTP and no chunk requests: 8 MiB pieces
# handed from the receiving thread to a storing one (each hashed, written at its offset and
# fed to the whole-file hash). The most a verified, stored transfer can get from this box.
STORING_RECEIVER = """
import hashlib, os, queue, socket, sys, threading, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9400)); s.listen(1); print("ready", flush=True)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
pieces = queue.Queue(4); whole = hashlib.sha256()
def keep():
    at = 0
    while (view := pieces.get()) is not None:
        hashlib.sha256(view).hexdigest(); whole.update(view); os.pwrite(fd, view, at)
        at += len(view)
keeper = threading.Thread(target=keep); keeper.start()
c, _ = s.accept(); n = 0; t = None
while True:
    view = memoryview(bytearray(8 << 20)); got = 0
    while got < len(view) and (k := c.recv_into(view[got:])):
        t = t or time.monotonic(); got += k
    if got:
        pieces.put(view[:got]); n += got
    if got < len(view):
        break
pieces.put(None); keeper.join(); whole.hexdigest(); os.close(fd); os.unlink(sys.argv[1])
print(n, time.monotonic() - t, flush=True)
"""
SENDER = """
import socket, sys
c = socket.create_connection((sys.argv[1], 9400)); block = b"x" * (1 << 20)
for _ in range(int(sys.argv[2])): c.sendall(block)
c.close()
"""


def shape(ns, mbit: int) -> None:
    burst = max(32, mbit // 8) * 1024
    ns.run(
        [
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            f"{mbit}mbit",
            "burst",
            str(burst),
            "latency",
            "50ms",
        ]
    )


def raw_tcp(lan: Lan, a, b, mib: int, store: Path | None = None) -> float:
    """Bytes/s of one TCP stream from a to b; with `store`, b keeps it as a pull would."""
    script = [RECEIVER] if store is None else [STORING_RECEIVER, str(store)]
    recv = subprocess.Popen(
        b.ns.command([sys.executable, "-c", *script]), stdout=subprocess.PIPE, text=True
    )
    assert recv.stdout is not None and recv.stdout.readline().startswith("ready")
    a.ns.run([sys.executable, "-c", SENDER, b.ns.addresses["eth0"], str(mib)], timeout=300)
    n, seconds = recv.stdout.readline().split()
    recv.wait(10)
    return int(n) / float(seconds)


def timed_pull(lan: Lan, node, body: dict) -> float:
    """Seconds the node's pull job ran (its own clock: the polling is left out)."""
    job = lan.pull(node, body)
    while True:
        time.sleep(1.0)  # each poll starts a client process: poll slowly
        status = lan.call("GET", f"{node.url}/admin/models/pull/{job}", ADMIN)["body"]
        if status and status["state"] in ("done", "failed"):
            break
    assert status["state"] == "done", status
    return status["finished"] - status["started"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--link-mbit", type=int, default=1000)
    parser.add_argument("--internet-mbit", type=int, default=100)
    parser.add_argument(
        "--peer-only", action="store_true", help="raw TCP vs one peer pull; not the 3 nodes"
    )
    parser.add_argument(
        "--model", type=Path, help="a GGUF file to send instead of the bundled Gemma 3 270M"
    )
    args = parser.parse_args()
    from edgebox.models import resolve_model

    model = args.model or resolve_model("gemma3-270m").path
    size = model.stat().st_size
    tmp = Path(f"/tmp/bench-transfer-{time.time_ns()}")
    tmp.mkdir(parents=True)
    with NetnsLab(subnet=79) as lab:
        lan = Lan(lab, tmp)
        a = lan.start("a", 1, str(model))
        b = lan.start("b", 2)
        shape(a.ns, args.link_mbit)
        tcp = raw_tcp(lan, a, b, size >> 20)
        stored = raw_tcp(lan, a, b, size >> 20, tmp / "stored.bin")
        peer_s = timed_pull(lan, b, {"spec": "smollm2-135m", "peers": [a.url]})
        peer = size / peer_s
        result = {
            "model_bytes": size,
            "link_mbit": args.link_mbit,
            "load_1min": os.getloadavg()[0],
            "raw_tcp_MBps": tcp / 1e6,
            "raw_tcp_stored_MBps": stored / 1e6,
            "peer_MBps": peer / 1e6,
            "ratio": peer / tcp,
        }
        print(json.dumps(result), flush=True)
    if args.peer_only:
        return
    print(json.dumps(three_nodes(model, tmp, args.link_mbit, args.internet_mbit)), flush=True)


def three_nodes(model: Path, tmp: Path, link: int, internet: int) -> dict[str, float]:
    www = tmp / "www"
    www.mkdir()
    (www / model.name).symlink_to(model)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    times = {}
    for mode in ("internet", "p2p"):
        with NetnsLab(subnet=79) as lab:
            lan = Lan(lab, tmp / mode)
            (tmp / mode).mkdir()
            url = lan.internet(9, www) + f"/files/{model.name}"
            shape(lan.inet, internet)
            nodes = [lan.start(f"n{i}", i) for i in (1, 2, 3)]
            for n in nodes:
                shape(n.ns, link)
            body = {"spec": url, "sha256": digest, "peers": []}
            start = time.monotonic()
            if mode == "internet":
                jobs = [(n, lan.pull(n, body)) for n in nodes]
            else:
                lan.wait(nodes[0], lan.pull(nodes[0], body), timeout=600)
                peers = {**body, "peers": [nodes[0].url]}
                jobs = [(n, lan.pull(n, peers)) for n in nodes[1:]]
            for n, job in jobs:
                status = lan.wait(n, job, timeout=600)
                if status["state"] != "done":
                    raise SystemExit(f"{mode}: the pull on {n.url} ended {status}")
            times[f"three_nodes_{mode}_s"] = time.monotonic() - start
    times["internet_mbit"] = internet
    return times


if __name__ == "__main__":
    main()
