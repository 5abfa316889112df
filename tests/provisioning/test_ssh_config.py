"""The laptop side: the node directory file, the generated ssh_config, the route choice and the
host-key refusal message (the live paths are in test_cafe)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgebox.provisioning.ssh_config import (
    DirectoryError,
    FileNodeDirectory,
    choose_route,
    explain_ssh_failure,
    find_node,
    parse_directory,
    render_known_hosts,
    render_ssh_config,
    ssh_command,
    with_include,
)

HUB_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMLeouh/aMwzSepD0sYp2VMOOgpr7Viilu7Q6ck43wMU"
NODE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP5/loF3aUSM3v3Q1phPIJToMApRn7bxL1RM/8zdTbCM"
DOC = {
    "hub": {"host": "hub.example", "port": 2222, "user": "edgebox-jump", "host_key": HUB_KEY},
    "nodes": [
        {
            "name": "spark",
            "id": "n1",
            "host_key": NODE_KEY + " root@spark",
            "tunnel_port": 42001,
            "lan_addresses": ["192.168.1.5", "[fe80::1]:2200"],
        }
    ],
}
# What OpenSSH 9.2 prints when a pinned key differs (recorded from test_cafe's run).
CHANGED = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Host key for edgebox-node-n1 has changed and you have requested strict checking.
Host key verification failed.
"""


def test_directory_file_round_trip_and_field_errors(tmp_path: Path) -> None:
    path = tmp_path / "fleet_nodes.json"
    path.write_text(json.dumps(DOC))
    directory = FileNodeDirectory(path)
    assert directory.hub().port == 2222
    (spark,) = directory.nodes()
    assert spark.alias == "spark.edgebox" and spark.user == "root"
    assert spark.host_key == NODE_KEY  # comment dropped
    with pytest.raises(DirectoryError, match=re.escape("nodes[0].name")):
        parse_directory({**DOC, "nodes": [{**DOC["nodes"][0], "name": "a b*"}]})
    with pytest.raises(DirectoryError, match="'tunnel_port'"):
        parse_directory({**DOC, "nodes": [{"name": "x", "id": "y", "host_key": NODE_KEY}]})
    with pytest.raises(DirectoryError, match="no node directory"):
        FileNodeDirectory(tmp_path / "missing.json").nodes()
    with pytest.raises(DirectoryError, match=re.escape("unknown node 'gpu' (known: spark)")):
        find_node(directory.nodes(), "gpu")


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"hub": {**DOC["hub"], "host": "h\n    ProxyCommand sh -c id"}}, "hub.host"),
        ({"hub": {**DOC["hub"], "user": "u\nProxyCommand x"}}, "hub.user"),
        ({"nodes": [{**DOC["nodes"][0], "user": "root\n    LocalCommand x"}]}, "nodes[0].user"),
        (
            {"nodes": [{**DOC["nodes"][0], "lan_addresses": ["-oProxyCommand=x"]}]},
            "nodes[0].lan_addresses",
        ),
        ({"nodes": [{**DOC["nodes"][0], "tunnel_port": 70000}]}, "nodes[0].tunnel_port"),
    ],
)
def test_registry_data_cannot_inject_ssh_options(patch: dict, field: str) -> None:
    with pytest.raises(DirectoryError, match=re.escape(field)):
        parse_directory({**DOC, **patch})


def test_config_pins_keys_and_jumps_through_the_hub(tmp_path: Path) -> None:
    hub, nodes = parse_directory(DOC)
    config = render_ssh_config(hub, nodes, tmp_path, tmp_path / "id_ed25519")
    block = config.split("Host spark.edgebox\n")[1]
    for line in (
        "HostName 127.0.0.1",
        "Port 42001",
        "HostKeyAlias edgebox-node-n1",
        "ProxyJump edgebox-hub",
        "StrictHostKeyChecking yes",
        f"UserKnownHostsFile {tmp_path}/known_hosts",
        "GlobalKnownHostsFile /dev/null",
    ):
        assert f"    {line}\n" in block
    assert "User edgebox-jump" in config.split("Host spark.edgebox")[0]
    assert render_known_hosts(hub, nodes).splitlines() == [
        f"edgebox-hub {HUB_KEY}",
        f"edgebox-node-n1 {NODE_KEY}",
    ]


def test_include_goes_first_once() -> None:
    path = Path("/home/u/.edgebox/ssh_config")
    user = "Host *\n    ServerAliveInterval 30\n"
    once = with_include(user, path)
    assert once.splitlines()[0] == "Include /home/u/.edgebox/ssh_config"
    assert with_include(once, path) == once
    moved = with_include(user + "Include /home/u/.edgebox/ssh_config\n", path)
    assert moved == once  # an Include after Host blocks would be scoped to them: moved up
    assert with_include("", path) == "Include /home/u/.edgebox/ssh_config\n"


def test_route_is_lan_only_where_the_pinned_key_answers() -> None:
    _, (spark,) = parse_directory(DOC)
    answers = {("192.168.1.5", 22): ["ssh-ed25519 AAAAsomeoneelse"], ("fe80::1", 2200): [NODE_KEY]}
    route = choose_route(spark, lambda host, port, _type: answers.get((host, port), []))
    assert (route.via, route.host, route.port) == ("lan", "fe80::1", 2200)
    route = choose_route(spark, lambda *_: [])
    assert (route.via, route.port) == ("hub", 42001)
    argv = ssh_command(
        Path("/c"), spark, choose_route(spark, lambda *_: [NODE_KEY]), [], ["ls", "-l"]
    )
    assert argv == [
        "ssh",
        "-F",
        "/c",
        "-o",
        "ProxyJump=none",
        "-o",
        "HostName=192.168.1.5",
        "-o",
        "Port=22",
        "spark.edgebox",
        "--",
        "ls",
        "-l",
    ]


def test_changed_key_message_names_the_node_and_what_to_do() -> None:
    hub, nodes = parse_directory(DOC)
    message = explain_ssh_failure(255, CHANGED, hub, nodes)
    assert message is not None and "node 'spark'" in message and "differs" in message
    hub_changed = CHANGED.replace("edgebox-node-n1", "edgebox-hub")
    assert "hub relay (hub.example:2222)" in (
        explain_ssh_failure(255, hub_changed, hub, nodes) or ""
    )
    assert explain_ssh_failure(1, CHANGED, hub, nodes) is None  # the remote command's own code
    assert explain_ssh_failure(255, "Connection refused", hub, nodes) is None


def test_refusals_name_the_node_or_the_hub_and_what_to_run() -> None:
    hub, nodes = parse_directory(DOC)
    spark = nodes[0]
    node_denied = "root@127.0.0.1: Permission denied (publickey,password).\r\n"
    message = explain_ssh_failure(255, node_denied, hub, nodes, spark) or ""
    assert message.startswith("node 'spark' refused this laptop's key for root.")
    assert "edgebox ssh --setup" in message and "127.0.0.1" not in message
    hub_denied = f"{hub.user}@{hub.host}: Permission denied (publickey).\r\n"
    message = explain_ssh_failure(255, hub_denied, hub, nodes, spark) or ""
    assert message.startswith("the hub relay (hub.example:2222) refused this laptop's key")
    down = "channel 0: open failed: connect failed: Connection refused\nstdio forwarding failed"
    message = explain_ssh_failure(255, down, hub, nodes, spark) or ""
    assert message.startswith("node 'spark' is not connected to the hub relay")
    assert explain_ssh_failure(1, node_denied, hub, nodes, spark) is None


def test_the_generated_config_never_falls_back_to_passwords() -> None:
    hub, nodes = parse_directory(DOC)
    text = render_ssh_config(hub, nodes, Path("/h"), None)
    for option in (
        "PreferredAuthentications publickey",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
    ):
        assert text.count(option) == 1 + len(nodes)  # the hub's block and each node's
