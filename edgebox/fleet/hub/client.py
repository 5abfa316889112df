"""Talking to a hub over HTTPS pinned to its certificate fingerprint.

The pin is checked inside the TLS handshake (a custom SSLSocket/SSLObject class), so when the
hub's certificate does not match, the connection fails before one byte of HTTP is written.
System certificate authorities play no part.
"""

from __future__ import annotations

import hashlib
import ssl
from typing import Any

import httpx


class FingerprintMismatch(ssl.SSLError):
    pass


class HubError(Exception):
    """A refusal or failure from the hub, with the hub's own message and code."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _check(der: bytes | None, expected: str) -> None:
    got = "sha256:" + hashlib.sha256(der or b"").hexdigest()
    if got != expected:
        raise FingerprintMismatch(
            f"the hub's TLS certificate has fingerprint {got}, but the token pins {expected}; "
            "refusing to talk to it (wrong address, or someone in between)"
        )


def pinned_context(fingerprint: str) -> ssl.SSLContext:
    """An SSL context that accepts exactly the certificate with this sha256 fingerprint."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # no CA chain: the pin below is the whole trust decision

    class PinnedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            _check(self.getpeercert(binary_form=True), fingerprint)

    class PinnedObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            _check(self.getpeercert(binary_form=True), fingerprint)

    ctx.sslsocket_class = PinnedSocket
    ctx.sslobject_class = PinnedObject
    return ctx


def _mismatch_in(exc: BaseException) -> FingerprintMismatch | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FingerprintMismatch):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class HubClient:
    """A small sync client for the hub API; tries each hub URL in turn on connection errors."""

    def __init__(
        self,
        urls: list[str] | tuple[str, ...],
        fingerprint: str,
        *,
        bearer: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.urls = list(urls)
        headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
        self._http = httpx.Client(
            verify=pinned_context(fingerprint), timeout=timeout, headers=headers, trust_env=False
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, *, json: Any = None, bearer: str | None = None
    ) -> Any:
        headers = {"authorization": f"Bearer {bearer}"} if bearer else None
        last: Exception | None = None
        for url in self.urls:
            try:
                resp = self._http.request(method, url + path, json=json, headers=headers)
            except httpx.TransportError as exc:
                mismatch = _mismatch_in(exc)
                if mismatch:
                    raise HubError(0, "fingerprint_mismatch", str(mismatch.args[0])) from None
                last = exc
                continue
            if resp.status_code >= 400:
                try:
                    err = resp.json()["error"]
                    raise HubError(resp.status_code, err.get("code"), err["message"])
                except (ValueError, KeyError, TypeError):
                    message = f"hub answered {resp.status_code}"
                    raise HubError(resp.status_code, None, message) from None
            return resp.json()
        raise HubError(0, "unreachable", f"cannot reach the hub at {', '.join(self.urls)}: {last}")
