"""The node's tunnel settings come from its membership (fleet.json)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgebox.fleet.hub.relay_runner import RelaySetupError, ensure_accounts
from edgebox.fleet.node_tunnel import NoTunnel, spec_from_fleet

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr4mS0d5kBqF3o5wMOKUIdpGGd7rqVWqRV8eEfGk1xR relay"


def test_spec_from_membership(tmp_path: Path) -> None:
    fleet = {
        "tunnel_port": 20003,
        "node_key": "/n/ssh/id_ed25519",
        "hub_ssh": {"host": "hub.lan", "port": 2222, "user": "edgebox-tunnel", "host_key": KEY},
    }
    spec = spec_from_fleet(fleet, tmp_path)
    assert (spec.hub_host, spec.hub_port, spec.user, spec.tunnel_port) == (
        "hub.lan",
        2222,
        "edgebox-tunnel",
        20003,
    )
    assert spec.hub_host_key == KEY and spec.identity_file == Path("/n/ssh/id_ed25519")
    assert spec.known_hosts_file == tmp_path / "hub_known_hosts"
    fleet["hub_ssh"]["host_key"] = None  # a hub without a relay: no tunnel, said plainly
    with pytest.raises(NoTunnel, match="no relay host key"):
        spec_from_fleet(fleet, tmp_path)


def test_missing_accounts_name_the_command_to_create_them() -> None:
    assert ensure_accounts(["root"], create=False) == []
    with pytest.raises(RelaySetupError) as caught:
        ensure_accounts(["root", "edgebox-no-such-account-x"], create=False)
    message = str(caught.value)
    assert (
        "useradd --system --no-create-home --shell /usr/sbin/nologin edgebox-no-such-account-x"
        in message
    )
    assert "--ssh-user/--jump-user" in message


def test_tunnel_command_without_membership_says_to_join(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from edgebox.cli import app

    monkeypatch.setenv("EDGEBOX_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["tunnel"])
    assert result.exit_code == 1
    assert "has not joined a hub" in result.output and "edgebox join" in result.output
    result = CliRunner().invoke(app, ["tunnel", "--hub", "h:22"])
    assert result.exit_code == 1 and "--hub needs --hub-key" in result.output
