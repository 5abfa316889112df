"""Ranged GETs straight into a buffer: one kept-alive connection per thread and host.

The chunk fetcher's hot path. `http.client`'s `readinto` fills the chunk's buffer with large
socket reads and no intermediate copies, where a streaming client re-chunks every 64 KiB;
on a busy 2-core box that difference is most of the link.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from edgebox.api.netguard import BlockedAddress, ConnectGuard, shown_netloc

SLICE = 1 << 20  # bytes per readinto: the rate limit and cancellation act this often
REDIRECT_BODY = 64 << 10  # read of a redirect's body; longer, the connection is dropped
MAX_REDIRECTS = 5
_TLS_LOCK = threading.Lock()


class SourceError(Exception):
    """This source did not give the range (unreachable, an HTTP error, a short answer)."""


@dataclass(frozen=True)
class RangeAsk:
    """Fill `buf` with the bytes of `url` from `start`; `on_block(n)` after each slice (it may
    raise to stop: cancellation, a rate limit's wait). A `peer` is held to its own host: its
    redirects elsewhere are not followed (a LAN stranger does not aim the node's requests)."""

    url: str
    headers: dict[str, str]
    start: int
    buf: memoryview
    on_block: Callable[[int], None]
    kind: str = "internet"  # or "peer"


class RangeClient:
    """With a `guard`, every connection (each redirect's too) goes through it."""

    def __init__(self, timeout: float = 30.0, guard: ConnectGuard | None = None) -> None:
        self.timeout, self.guard = timeout, guard
        self._local = threading.local()
        self._tls: ssl.SSLContext | None = None  # made on the first https source (~20 ms)

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        pool: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("pool", {})
        key = f"{scheme}://{netloc}"
        conn = pool.get(key)
        if conn is None:
            if scheme == "https":
                context = self._tls_context()
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout, context=context)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            if self.guard is not None:
                conn._create_connection = self.guard.connect  # type: ignore[attr-defined]
            pool[key] = conn
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        with _TLS_LOCK:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            return self._tls

    def _drop(self, scheme: str, netloc: str) -> None:
        pool = self._local.__dict__.get("pool", {})
        conn = pool.pop(f"{scheme}://{netloc}", None)
        if conn is not None:
            conn.close()

    def read_into(self, ask: RangeAsk) -> None:
        """Fill `ask.buf` with the bytes at `ask.start` of `ask.url`. SourceError when the
        source fails in any way; what `ask.on_block` raises passes through."""
        url, origin = ask.url, urlsplit(ask.url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise SourceError(f"not an http(s) URL: {parts.scheme}://…")
            if ask.kind == "peer" and parts.netloc != origin:
                raise SourceError(
                    f"{shown_netloc(origin)}: a peer's redirect to another host is not followed"
                )
            send = dict(ask.headers) if parts.netloc == origin else {}  # keys stay with their host
            send["Range"] = f"bytes={ask.start}-{ask.start + len(ask.buf) - 1}"
            conn = self._connection(parts.scheme, parts.netloc)
            try:
                location = self._get(conn, _target(url), send, ask)
            except BlockedAddress as exc:
                self._drop(parts.scheme, parts.netloc)
                raise SourceError(f"refused: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop(parts.scheme, parts.netloc)
                raise SourceError(f"{shown_netloc(parts.netloc)}: {type(exc).__name__}") from None
            except BaseException:
                self._drop(parts.scheme, parts.netloc)  # a half-read answer: not reusable
                raise
            if location is None:
                return
            url = self._redirect(parts.hostname or "", urljoin(url, location))
        raise SourceError("too many redirects")

    def _redirect(self, origin: str, url: str) -> str:
        """`url`, once a redirect there from `origin` is allowed (SourceError if not)."""
        target = urlsplit(url)
        if self.guard is not None and target.hostname:
            try:
                port = target.port or (443 if target.scheme == "https" else 80)
                self.guard.check_redirect(origin, target.hostname, port)
            except BlockedAddress as exc:
                raise SourceError(f"refused: {exc}") from None
            except (OSError, ValueError) as exc:
                raise SourceError(f"{shown_netloc(target.netloc)}: {type(exc).__name__}") from None
        return url

    def _get(
        self, conn: http.client.HTTPConnection, target: str, headers: dict[str, str], ask: RangeAsk
    ) -> str | None:
        """The redirect's location, or None once `ask.buf` is full."""
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        if resp.status in (301, 302, 303, 307, 308):
            resp.read(REDIRECT_BODY)
            if not resp.isclosed():  # a body without end: not read, not reused
                conn.close()
            return resp.headers.get("location") or ""
        if resp.status not in (200, 206) or (resp.status == 200 and ask.start):
            raise SourceError(f"{conn.host}: HTTP {resp.status}")
        got, size = 0, len(ask.buf)
        while got < size:
            n = resp.readinto(ask.buf[got : got + SLICE])
            if not n:
                raise SourceError(f"{conn.host}: short answer ({got} of {size} bytes)")
            got += n
            ask.on_block(n)
        if resp.status == 200 or resp.length:  # more than asked: the connection is spent
            conn.close()
        return None


def _target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
