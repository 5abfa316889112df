"""The TXT record a node advertises, and how a browser reads one."""

from __future__ import annotations

import pytest

from edgebox.fleet.advert import (
    PROTOCOL_VERSION,
    instance_name,
    model_digest,
    parse_advert,
    txt_properties,
)

FP = "SHA256:JZzit8rCWMCmFeBgsXWIC7unhzjk+n6VyRn67p7BuOQ"
NODE_ID = "434d8804e9254983bb9f2a93188617bd"


def _props(**overrides: object) -> dict[str, str]:
    args: dict = dict(
        node_id=NODE_ID,
        name="spark",
        host_key_fingerprint=FP,
        api_port=8080,
        accelerator="nvidia-dgx-spark",
        models=["smollm2-135m", "gemma3-270m"],
    )
    return txt_properties(**(args | overrides))


def test_round_trip_through_bytes_as_zeroconf_delivers_them() -> None:
    wire = {k.encode(): v.encode() for k, v in _props().items()}
    node = parse_advert("spark-434d8804._edgebox._tcp.local.", wire, ["192.168.1.20"])
    assert node is not None
    assert (node.node_id, node.name, node.api_port, node.accelerator) == (
        NODE_ID,
        "spark",
        8080,
        "nvidia-dgx-spark",
    )
    assert node.host_key_fingerprint == FP
    assert node.protocol_version == PROTOCOL_VERSION
    assert node.addresses == ("192.168.1.20",)
    assert node.model_digest == model_digest(["gemma3-270m", "smollm2-135m"])


def test_record_is_small_and_has_only_public_fields() -> None:
    props = _props()
    assert set(props) == {"v", "id", "name", "fp", "api", "acc", "md"}
    assert all(len(k) + 1 + len(v) < 255 for k, v in props.items())
    assert sum(len(k) + len(v) + 2 for k, v in props.items()) < 200


def test_loopback_only_api_leaves_the_port_out() -> None:
    props = _props(api_port=None)
    assert "api" not in props
    wire = {k.encode(): v.encode() for k, v in props.items()}
    node = parse_advert("x._edgebox._tcp.local.", wire, [])
    assert node is not None and node.api_port is None


def test_model_digest_ignores_order_and_changes_with_the_set() -> None:
    assert model_digest(["a", "b"]) == model_digest(["b", "a"])
    assert model_digest(["a"]) != model_digest(["a", "b"])
    assert len(model_digest([])) == 12


@pytest.mark.parametrize(
    "change",
    [{b"v": b"2"}, {b"v": b"x"}, {b"id": b""}, {b"fp": None}],
    ids=["newer-protocol", "garbage-version", "no-id", "no-fingerprint"],
)
def test_records_we_cannot_use_are_ignored(change: dict) -> None:
    wire = {k.encode(): v.encode() for k, v in _props().items()} | change
    assert parse_advert("x._edgebox._tcp.local.", wire, ["10.0.0.1"]) is None


def test_bad_port_reads_as_none() -> None:
    wire = {k.encode(): v.encode() for k, v in _props().items()} | {b"api": b"99999"}
    node = parse_advert("x._edgebox._tcp.local.", wire, [])
    assert node is not None and node.api_port is None


def test_instance_name_is_a_clean_label_with_the_id() -> None:
    assert instance_name("spark.lan", NODE_ID) == "spark-lan-434d8804"
    assert instance_name("...", NODE_ID) == "edgebox-434d8804"
    assert len(instance_name("x" * 100, NODE_ID)) <= 63


def test_too_long_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="acc"):
        _props(accelerator="x" * 300)
