"""The relay's rendered OpenSSH files: what each key may do, and that sshd accepts them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgebox.fleet.relay import (
    NodeRecord,
    RelayConfigError,
    RelaySettings,
    UserRecord,
    render_node_keys,
    render_sshd_config,
    render_user_keys,
)
from tests.sshnet import keygen, missing_prerequisites

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMLeouh/aMwzSepD0sYp2VMOOgpr7Viilu7Q6ck43wMU a@box"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP5/loF3aUSM3v3Q1phPIJToMApRn7bxL1RM/8zdTbCM"
NODES = [NodeRecord("a", "id-a", KEY_A, KEY_B, 42001), NodeRecord("b", "id-b", KEY_B, KEY_A, 42002)]


def test_node_lines_listen_only_on_their_own_port_and_get_no_command() -> None:
    lines = render_node_keys(NODES).splitlines()[1:]
    assert lines[0].startswith(
        'restrict,port-forwarding,permitlisten="127.0.0.1:42001",command="/usr/sbin/nologin" '
        "ssh-ed25519 AAAAC3"
    )
    assert 'permitlisten="127.0.0.1:42002"' in lines[1]
    assert "a@box" not in lines[0]  # the key's own comment is not carried over
    assert all("permitopen" not in line for line in lines)  # closed by the account instead
    evil = NodeRecord("c", "x\nssh-ed25519 AAAAC3Nza attacker", KEY_A, KEY_A, 42003)
    assert len(render_node_keys([evil]).splitlines()) == 2  # the id cannot add a key line


def test_user_lines_open_only_registered_node_ports() -> None:
    line = render_user_keys([UserRecord("ann", KEY_A)], NODES).splitlines()[1]
    assert 'permitopen="127.0.0.1:42001",permitopen="127.0.0.1:42002"' in line
    assert line.startswith("restrict,port-forwarding,") and 'command="/usr/sbin/nologin"' in line
    empty = render_user_keys([UserRecord("ann", KEY_A)], []).splitlines()[1]
    assert 'permitopen="127.0.0.1:1"' in empty  # no node yet: nothing useful to open


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([NODES[0], NodeRecord("c", "id-c", KEY_B, KEY_A, 42001)], "share port 42001"),
        ([NODES[0], NodeRecord("c", "id-c", KEY_A, KEY_A, 42003)], "share a tunnel key"),
        ([NodeRecord("c", "id-c", KEY_A, KEY_A, 22)], "1024-65535"),
        ([NodeRecord("c", "id-c", 'x" command="sh', KEY_A, 42003)], "not an OpenSSH public key"),
        ([NodeRecord("c", "id-c", KEY_A + "\nssh-ed25519 AAAA", KEY_A, 42003)], "not an OpenSSH"),
    ],
)
def test_unsafe_records_are_refused(nodes: list[NodeRecord], message: str) -> None:
    with pytest.raises(RelayConfigError, match=message):
        render_node_keys(nodes)


def test_sshd_config_closes_shell_pty_and_the_other_direction() -> None:
    config = render_sshd_config(RelaySettings(port=2222))
    for line in (
        "PermitTTY no",
        "X11Forwarding no",
        "AllowAgentForwarding no",
        "GatewayPorts no",
        "PasswordAuthentication no",
        "ForceCommand /usr/sbin/nologin",
        "Port 2222",
    ):
        assert line in config.splitlines()
    tunnel, jump = config.split("Match User ")[1:]
    assert "AllowTcpForwarding remote" in tunnel and "PermitOpen none" in tunnel
    assert "AllowTcpForwarding local" in jump and "PermitListen none" in jump


def test_real_sshd_accepts_the_rendered_config(tmp_path: Path) -> None:
    if missing_prerequisites():
        pytest.fail("needs: " + "; ".join(missing_prerequisites()))
    keygen(tmp_path / "host_key")
    settings = RelaySettings(
        host_key_file=str(tmp_path / "host_key"),
        tunnel_user="daemon",
        jump_user="nobody",
        pid_file="none",
    )
    (tmp_path / "cfg").write_text(render_sshd_config(settings))
    done = subprocess.run(
        ["/usr/sbin/sshd", "-t", "-f", str(tmp_path / "cfg")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
