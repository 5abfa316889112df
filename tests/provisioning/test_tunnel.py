"""The tunnel's command line, backoff and failure reading (the live tunnel is in test_cafe)."""

from __future__ import annotations

import random
from pathlib import Path

from edgebox.fleet.tunnel import Backoff, TunnelSpec, classify_exit, tunnel_argv

SPEC = TunnelSpec(
    hub_host="hub.example",
    hub_port=2222,
    hub_host_key="ssh-ed25519 AAAAC3Nza x",
    identity_file=Path("/k"),
    tunnel_port=42001,
    known_hosts_file=Path("/kh"),
    api_forward=(43001, 8080),
)


def test_argv_pins_the_hub_key_and_exits_on_forward_failure() -> None:
    argv = tunnel_argv(SPEC)
    assert argv[:3] == ["ssh", "-N", "-F"]
    assert argv[argv.index("-R") + 1] == "127.0.0.1:42001:127.0.0.1:22"
    assert "127.0.0.1:43001:127.0.0.1:8080" in argv
    for option in (
        "ExitOnForwardFailure=yes",
        "StrictHostKeyChecking=yes",
        "HostKeyAlias=edgebox-hub",
        "UserKnownHostsFile=/kh",
        "BatchMode=yes",
    ):
        assert option in argv
    assert argv[-3:] == ["-p", "2222", "edgebox-tunnel@hub.example"]


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    backoff = Backoff(initial=1, maximum=60, jitter=0.5)
    rng = random.Random(7)
    delays = [backoff.delay(n, rng) for n in range(1, 12)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2
    assert all(30 <= d <= 60 for d in delays[7:])  # capped, never above the maximum
    assert len({round(d, 6) for d in delays[7:]}) > 1  # jittered: reconnects do not align


def test_refused_rebind_is_named_as_retryable() -> None:
    stderr = "debug1: x\nError: remote port forwarding failed for listen port 42001\n"
    assert "refused the port" in classify_exit(stderr)
    assert "host key differs" in classify_exit("Host key verification failed.\n")
    assert classify_exit("debug1: a\nssh: connect to host h port 22: No route to host\n") == (
        "ssh: connect to host h port 22: No route to host"
    )
