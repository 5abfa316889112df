"""Who may call which hub route: the scope table every route declares with `@requires`, and
the scopes at a real hub process on loopback (admin key, a user's read token, a node secret,
no credential at all)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.routing import Route

from edgebox.fleet.hub.app import ROUTES
from edgebox.fleet.hub.client import HubClient, HubError
from tests.conftest import free_port
from tests.fleet.test_hub import Hub

USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr4mS0d5kBqF3o5wMOKUIdpGGd7rqVWqRV8eEfGk1xR ann"

# (method, path) -> the scope its route requires; None: open (a token, a signature or nothing)
SCOPES = {
    ("GET", "/health"): None,
    ("POST", "/v1/hub/join"): None,
    ("POST", "/v1/hub/rejoin"): None,
    ("POST", "/v1/hub/heartbeat"): "node",
    ("GET", "/v1/hub/nodes"): "reader",
    ("GET", "/v1/hub/nodes/{node}"): "admin",
    ("DELETE", "/v1/hub/nodes/{node}"): "admin",
    ("GET", "/v1/hub/events"): "admin",
    ("GET", "/v1/hub/blobs/{digest}"): "reader",
    ("GET", "/v1/hub/blob-grants"): "reader",
    ("POST", "/v1/hub/tokens"): "admin",
    ("GET", "/v1/hub/tokens"): "admin",
    ("DELETE", "/v1/hub/tokens/{token}"): "admin",
    ("POST", "/v1/hub/users"): "admin",
    ("GET", "/v1/hub/users"): "admin",
    ("DELETE", "/v1/hub/users/{user}"): "admin",
    ("GET", "/v1/hub/node-keys"): "reader",
    ("GET", "/v1/hub/me"): "user",
    ("PUT", "/v1/hub/me/key"): "user",
}


def _declared() -> dict[tuple[str, str], str | None]:
    table = {}
    for route in ROUTES:
        assert isinstance(route, Route)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            table[(method, route.path)] = getattr(route.endpoint, "hub_scope", None)
    return table


def test_every_route_declares_its_scope_and_only_the_open_ones_have_none() -> None:
    assert _declared() == SCOPES


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path / "hub", free_port(), tmp_path / "hub.log", interval=30)
    h.start()
    yield h
    h.stop()


def _refused(client: HubClient, method: str, path: str, bearer: str | None = None) -> str | None:
    with pytest.raises(HubError) as caught:
        client.request(method, path, json={} if method == "POST" else None, bearer=bearer)
    assert caught.value.status == 401, (method, path, caught.value.message)
    return caught.value.code


def test_each_scope_at_a_real_hub(hub: Hub) -> None:
    info = hub.info
    with hub.admin() as admin:
        login = admin.request(
            "POST", "/v1/hub/users", json={"name": "ann", "ssh_public_key": USER_KEY}
        )
    user_token = login["login"].split(".", 1)[1]
    assert user_token.startswith("ebu_")
    digest = "0" * 64
    guarded = [
        (m, p.format(node="n", token="t", user="u", digest=digest))
        for (m, p), s in SCOPES.items()
        if s
    ]
    with HubClient(info["urls"], info["fingerprint"]) as anon:
        for method, path in guarded:
            assert _refused(anon, method, path) == "missing_credentials"
        # a read token reads the node list and the nodes' keys, and its own user record
        listed = anon.request("GET", "/v1/hub/nodes", bearer=user_token)
        assert listed["object"] == "list" and listed["relay"]["jump_user"] == "edgebox-jump"
        assert anon.request("GET", "/v1/hub/node-keys", bearer=user_token)["data"] == []
        assert anon.request("GET", "/v1/hub/me", bearer=user_token)["name"] == "ann"
        assert anon.request("GET", f"/v1/hub/blobs/{digest}", bearer=user_token)["nodes"] == []
        user_routes = ("/v1/hub/nodes", "/v1/hub/node-keys", "/v1/hub/me", "/v1/hub/me/key")
        assert anon.request("GET", "/v1/hub/blob-grants", bearer=user_token)["data"] == []
        user_routes += (f"/v1/hub/blobs/{digest}", "/v1/hub/blob-grants")
        for method, path in guarded:
            if path not in (*user_routes, "/v1/hub/heartbeat"):
                assert _refused(anon, method, path, user_token) == "invalid_admin_key"
        # the admin key is no user: it has no laptop key of its own
        admin_key = (hub.data / "admin.key").read_text().strip()
        assert _refused(anon, "GET", "/v1/hub/me", admin_key) == "invalid_user_token"
        assert _refused(anon, "GET", "/v1/hub/nodes", "ebu_forged") == "invalid_user_token"
        # a node secret is matched by the registry: a read token is no node secret
        assert _refused(anon, "POST", "/v1/hub/heartbeat", user_token) == "unknown_node"
    with hub.admin() as admin:
        assert admin.request("DELETE", "/v1/hub/users/ann") == {"name": "ann", "removed": True}
        with HubClient(info["urls"], info["fingerprint"]) as anon:
            assert _refused(anon, "GET", "/v1/hub/nodes", user_token) == "invalid_user_token"
        assert admin.request("GET", "/v1/hub/users") == {"object": "list", "data": []}
