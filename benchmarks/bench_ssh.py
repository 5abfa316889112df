"""`ssh NODE -- true` latency: direct on the LAN vs through the hub relay, in network namespaces.

Builds the test café (tests/sshnet.py: laptop, hub, node-a, node-b; real sshd everywhere, the
relay from edgebox's rendered config, node-a's tunnel from the supervisor) and times, N runs each:
  direct   ssh from the hub's network straight to node-a's sshd (the LAN route)
  relay    ssh from the laptop through the hub relay (ProxyJump: two SSH handshakes)
  edgebox  `edgebox ssh node-a -- true` from the laptop (adds Python start and the route check)
Each run is a fresh connection (no ControlMaster). Needs root, iproute2 and OpenSSH.

Usage: python benchmarks/bench_ssh.py [--runs 20]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgebox.fleet.tunnel import Backoff, TunnelSupervisor
from edgebox.provisioning.ssh_config import FileNodeDirectory, write_client_files
from tests.sshnet import cafe_fleet, missing_prerequisites


def timed(run, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = run()
        times.append((time.perf_counter() - start) * 1000)
        if done.returncode != 0:
            raise SystemExit(f"run failed: {done.stderr[-500:]}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if missing := missing_prerequisites():
        raise SystemExit("needs: " + "; ".join(missing))
    with tempfile.TemporaryDirectory() as tmp, cafe_fleet(Path(tmp)) as fleet:
        spec = fleet.tunnel_spec("node-a")
        tunnel = TunnelSupervisor(
            spec, Backoff(initial=0.2, maximum=1), ssh=fleet.cafe.ns("node-a").argv(["ssh"])
        )
        tunnel.start()
        try:
            if not tunnel.wait_up(15):
                raise SystemExit(f"tunnel did not come up: {tunnel.last_error}")
            node_a = fleet.cafe.ns("node-a").address
            lan = fleet.home("lan", fleet.directory(lan={"node-a": [node_a]}))
            cafe = fleet.home("cafe", fleet.directory())
            lan_cfg = write_client_files(FileNodeDirectory(lan / "fleet_nodes.json"), lan)
            cafe_cfg = write_client_files(FileNodeDirectory(cafe / "fleet_nodes.json"), cafe)
            rows = {
                "direct (LAN route, one handshake)": lambda: fleet.cafe.ns("hub").run(
                    [
                        "ssh",
                        "-F",
                        str(lan_cfg),
                        "-o",
                        "ProxyJump=none",
                        "-o",
                        f"HostName={node_a}",
                        "-o",
                        "Port=22",
                        "node-a.edgebox",
                        "true",
                    ]
                ),
                "relay (ProxyJump through the hub)": lambda: fleet.cafe.ns("laptop").run(
                    ["ssh", "-F", str(cafe_cfg), "node-a.edgebox", "true"]
                ),
                "`edgebox ssh node-a -- true` via hub": lambda: fleet.edgebox(
                    "laptop", cafe, "ssh", "node-a", "--", "true"
                ),
            }
            results = {name: timed(run, args.runs) for name, run in rows.items()}
        finally:
            tunnel.stop()
    print(f"machine: {platform.machine()}, {platform.node()}, python {platform.python_version()}")
    print("| path | median (ms) | p90 (ms) | min (ms) | runs |\n|---|---|---|---|---|")
    for name, times in results.items():
        p90 = sorted(times)[int(0.9 * (len(times) - 1))]
        print(
            f"| {name} | {statistics.median(times):.1f} | {p90:.1f} | {min(times):.1f} | {len(times)} |"
        )


if __name__ == "__main__":
    main()
