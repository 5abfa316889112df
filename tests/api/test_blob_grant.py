"""Blob grants, as a node's middleware takes them: the blob routes of one node, from its hub,
in time; anything else (another node, another hub, expired, bent, an inference or admin route)
is refused, and the refusal never quotes the grant."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from edgebox.api import auth, blob_grant
from edgebox.api.auth import NodeKeys, ScopedKeyMiddleware
from edgebox.api.blob_grant import GrantError, GrantVerifier

HUB = "sha256:" + "ab" * 32
NOW = 1_800_000_000.0
HUB_KEY = Ed25519PrivateKey.generate()


def _grant(
    *, key: Ed25519PrivateKey = HUB_KEY, hub: str = HUB, aud: str = "node-a", ttl: float = 900
) -> str:
    return blob_grant.issue(key, hub=hub, audience=aud, subject="member", now=NOW, ttl=ttl)


def _verifier(at: float = NOW + 10) -> GrantVerifier:
    return GrantVerifier(HUB, "node-a", blob_grant.public_key_text(HUB_KEY), clock=lambda: at)


def test_a_grant_holds_for_its_node_from_its_hub_in_time() -> None:
    assert _verifier().check(_grant()) == "member"


@pytest.mark.parametrize(
    ("grant", "at", "why"),
    [
        (_grant(aud="node-b"), NOW, "another node"),
        (_grant(hub="sha256:" + "cd" * 32), NOW, "another hub"),
        (_grant(key=Ed25519PrivateKey.generate()), NOW, "signature"),
        (_grant(), NOW + 901, "expired"),
        (_grant(ttl=86400), NOW, "time window"),
        (_grant(), NOW - 3600, "time window"),  # issued an hour in the node's future
        ("ebg1.e30.AAAA", NOW, "signature"),
        ("ebg1.nodot", NOW, "truncated"),
        ("ebg1." + "A" * 5000, NOW, "not a blob grant"),
    ],
)
def test_a_grant_that_does_not_hold_is_refused_saying_why(grant: str, at: float, why: str) -> None:
    with pytest.raises(GrantError, match=why):
        _verifier(at).check(grant)


def test_a_bent_payload_breaks_the_signature() -> None:
    head, payload, signature = _grant().split(".")
    claims = blob_grant._unb64(payload).replace(b'"node-a"', b'"node-b"')
    bent = f"{head}.{blob_grant._b64(claims)}.{signature}"
    with pytest.raises(GrantError, match="signature"):
        GrantVerifier(HUB, "node-b", blob_grant.public_key_text(HUB_KEY), clock=lambda: NOW).check(
            bent
        )


def test_a_node_that_does_not_know_its_hub_key_takes_no_grant() -> None:
    with pytest.raises(GrantError, match="public key"):
        GrantVerifier(HUB, "node-a").check(_grant())


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.fixture
def node() -> Iterator[TestClient]:
    paths = ["/v1/blobs/{d}", "/v1/blobs/{d}/chunks", "/v1/store/models/{n}", "/v1/models"]
    app = Starlette(routes=[Route(p, _ok) for p in [*paths, "/admin/requests"]])
    keys = NodeKeys(api_key="inference-k", admin_key="admin-k", blob_grants=_verifier(NOW))
    guarded = ScopedKeyMiddleware(app, keys)
    guarded.keys_for_tests = keys.blob_grants  # type: ignore[attr-defined]
    with TestClient(guarded, client=("10.0.0.9", 5000)) as c:
        yield c


def test_the_middleware_opens_the_blob_routes_only(node: TestClient) -> None:
    grant = _grant()
    auth = {"authorization": f"Bearer {grant}"}
    for path in (
        "/v1/blobs/" + "0" * 64,
        "/v1/blobs/" + "0" * 64 + "/chunks",
        "/v1/store/models/m",
    ):
        assert node.get(path, headers=auth).status_code == 200, path
    inference = node.get("/v1/models", headers=auth)
    assert inference.status_code == 403
    assert inference.json()["error"]["code"] == "grant_out_of_scope"
    assert node.get("/admin/requests", headers=auth).status_code == 401
    assert node.get("/v1/models", headers={"authorization": "Bearer inference-k"}).is_success
    other = {"authorization": f"Bearer {_grant(aud='node-b')}"}
    refused = node.get("/v1/blobs/" + "0" * 64, headers=other)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_blob_grant"
    assert grant not in inference.text and _grant(aud="node-b") not in refused.text


def test_a_grant_checked_once_still_expires() -> None:
    now = [NOW]
    verifier = GrantVerifier(HUB, "node-a", blob_grant.public_key_text(HUB_KEY), lambda: now[0])
    grant = _grant()
    assert verifier.check(grant) == verifier.check(grant) == "member"  # the second, from memory
    now[0] = NOW + 901
    with pytest.raises(GrantError, match="expired"):
        verifier.check(grant)
    with pytest.raises(GrantError, match="expired"):  # and again, from the signature
        verifier.check(grant)


@pytest.mark.parametrize("junk", ["!", "~", " ", "=", "é", "\t"])
def test_a_grant_is_one_string_not_many_that_decode_alike(junk: str) -> None:
    """base64's lenient decoder drops characters outside its alphabet: a member holding one
    grant could mint endless strings that verify, each a signature check and a fresh entry
    in the verified-grant cache (flushing the grants of real pulls). Only the exact string
    the hub signed holds."""
    head, payload, signature = _grant().split(".")
    verifier = _verifier()
    junk *= 4  # the padding the decoder adds stays right
    for bent in (
        f"{head}.{payload}{junk}.{signature}",
        f"{head}.{payload}.{signature[:10]}{junk}{signature[10:]}",
        f"{head}.{payload}.{signature}{junk}",
    ):
        with pytest.raises(GrantError, match="does not decode"):
            verifier.check(bent)
    assert verifier.check(_grant()) == "member"
    assert len(verifier._checked) == 1


def test_spare_bits_in_the_last_character_are_another_spelling_refused() -> None:
    head, payload, signature = _grant().split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    verifier = _verifier()
    spellings = {signature[:-1] + c for c in alphabet} - {signature}
    same = [s for s in spellings if blob_grant._unb64(s) == blob_grant._unb64(signature)]
    assert same  # 64 bytes → 86 characters: the last one carries 4 spare bits
    for bent in same:
        with pytest.raises(GrantError, match="does not decode"):
            verifier.check(f"{head}.{payload}.{bent}")


def test_one_address_sending_bad_grants_gets_a_bounded_number_of_signature_checks(
    node: TestClient,
) -> None:
    """A bad grant costs a signature check (~3 times a wrong key's whole request): from one
    address, past a burst, bad grants are refused without one (429, Retry-After), while
    grants already verified still pass and other addresses are not touched."""
    verifier = node.app.keys_for_tests  # type: ignore[attr-defined]
    good = {"authorization": f"Bearer {_grant()}"}
    assert node.get("/v1/blobs/" + "0" * 64, headers=good).status_code == 200
    checks = 0
    verify = verifier._verify

    def counted(grant: str) -> tuple[str, int]:
        nonlocal checks
        checks += 1
        return verify(grant)

    verifier._verify = counted
    forged = {"authorization": f"Bearer {_grant(key=Ed25519PrivateKey.generate())}"}
    started = time.monotonic()
    answers = [node.get("/v1/blobs/" + "0" * 64, headers=forged) for _ in range(300)]
    refilled = auth.BAD_GRANT_RATE * (time.monotonic() - started)  # the bucket's own refill
    assert checks <= auth.BAD_GRANT_BURST + refilled + 1, (checks, refilled)
    assert checks < 300 / 2  # most of the 300 were refused without a check
    last = answers[-1]
    assert last.status_code == 429 and int(last.headers["retry-after"]) >= 1, last.text
    assert last.json()["error"]["code"] == "too_many_bad_grants"
    assert node.get("/v1/blobs/" + "0" * 64, headers=good).status_code == 200  # cached: passes
    with TestClient(node.app, client=("10.0.0.10", 5000)) as other:
        assert other.get("/v1/blobs/" + "0" * 64, headers=forged).status_code == 401


def test_one_member_holding_its_places_does_not_lock_the_other_members_out() -> None:
    """Every member's grant names the same subject ("member"): counted under one key, one
    member holding the per-key limit in slow blob reads made every other member's 429.
    Grants are counted per subject and address."""
    import asyncio

    import httpx

    release = asyncio.Event()

    async def slow(request: Request) -> PlainTextResponse:
        await release.wait()
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/v1/blobs/{d}", slow)])
    keys = NodeKeys(api_key="k", per_key_limit=2, blob_grants=_verifier())
    guarded = ScopedKeyMiddleware(app, keys)
    auth = {"authorization": f"Bearer {_grant()}"}
    path = "/v1/blobs/" + "0" * 64

    async def scenario() -> tuple[list[int], int]:
        def client(host: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(guarded, client=(host, 5000))
            return httpx.AsyncClient(transport=transport, base_url="http://node")

        async with client("10.0.0.9") as greedy, client("10.0.0.10") as other:
            held = [asyncio.create_task(greedy.get(path, headers=auth)) for _ in range(2)]
            await asyncio.sleep(0.05)
            extra = await greedy.get(path, headers=auth)  # its own limit: 429
            fair = asyncio.create_task(other.get(path, headers=auth))
            await asyncio.sleep(0.05)
            release.set()
            statuses = [(await t).status_code for t in held] + [extra.status_code]
            return statuses, (await fair).status_code

    statuses, fair = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert statuses == [200, 200, 429]
    assert fair == 200
