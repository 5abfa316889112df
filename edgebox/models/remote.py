"""What the internet says about a file before it is downloaded: its size and digest from a
HEAD request (Hugging Face's `X-Linked-Size` and `X-Linked-Etag`, a URL's Content-Length), or
why it cannot be had (404, offline, gated)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpcore
import httpx

from edgebox.api.netguard import BlockedAddress, ConnectGuard, shown_netloc, shown_url
from edgebox.models.store import DIGEST
from edgebox.models.transfer import CONNECT_TIMEOUT_S, READ_TIMEOUT_S


class PullError(Exception):
    """The pull cannot go on; the message says what was wrong and what to do."""


class Offline(PullError):
    """The internet source cannot be reached (peers may still have the file)."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # the file's name inside the model
    url: str | None  # where the internet has it (None: peers only)
    size: int
    sha256: str | None
    source: str  # "huggingface", the URL's host, or "peer"
    headers: tuple[tuple[str, str], ...] = ()


class _GuardedBackend(httpcore.SyncBackend):
    """httpcore's sockets, each connected through a `ConnectGuard` (redirects included)."""

    def __init__(self, guard: ConnectGuard) -> None:
        self.guard = guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        if host in self.guard.allow_hosts:
            return super().connect_tcp(host, port, timeout, local_address, socket_options)
        error: httpcore.ConnectError | None = None
        try:
            addresses = self.guard.resolve(host, port)
        except OSError as exc:  # the name does not resolve
            raise httpcore.ConnectError(str(exc)) from None
        for ip in addresses:  # TLS still checks the certificate for `host` (httpcore's SNI)
            try:
                return super().connect_tcp(ip, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host}: no address")


def http_client(guard: ConnectGuard | None = None) -> httpx.Client:
    """The pulls' client; with a `guard`, every connection (redirects too) goes through it."""
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    transport = None
    if guard is not None:
        transport = httpx.HTTPTransport(limits=limits)
        transport._pool = httpcore.ConnectionPool(  # httpx has no option for a socket backend
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            network_backend=_GuardedBackend(guard),
        )
    hooks: dict[str, list[Callable[..., Any]]] | None = None
    if guard is not None:
        hooks = {"response": [functools.partial(_redirect_hook, guard)]}
    return httpx.Client(
        timeout=timeout,
        limits=limits,
        follow_redirects=True,
        trust_env=False,
        transport=transport,
        event_hooks=hooks,
    )


def _redirect_hook(guard: ConnectGuard, response: httpx.Response) -> None:
    """Before a redirect is followed: one into a peer's host is held to the guard."""
    if response.has_redirect_location:
        target = response.url.join(response.headers["location"])
        port = target.port or (443 if target.scheme == "https" else 80)
        guard.check_redirect(response.url.host, target.host, port)


def gated_error(repo: str) -> PullError:
    return PullError(f"{repo} is private or gated: accept its licence and log in (`hf auth login`)")


def network_error(where: str, exc: httpx.HTTPError) -> PullError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return Offline(
            f"offline: cannot reach {where} ({type(exc).__name__}); "
            "check the network, or pull from a peer or a local path"
        )
    return PullError(f"{where} did not answer properly ({type(exc).__name__})")


def hf_headers() -> tuple[tuple[str, str], ...]:
    token = os.environ.get("HF_TOKEN")
    if not token:
        try:
            from huggingface_hub import get_token

            token = get_token()
        except Exception:  # no huggingface_hub config: anonymous
            token = None
    return (("Authorization", f"Bearer {token}"),) if token else ()


def hf_file(client: httpx.Client, repo: str, filename: str) -> RemoteFile:
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{repo}/resolve/main/{quote(filename)}"
    headers = hf_headers()
    try:
        r = client.head(url, headers=dict(headers), follow_redirects=False)
        if r.is_redirect and "x-linked-size" not in r.headers:
            r = client.head(url, headers=dict(headers))
    except httpx.HTTPError as exc:
        raise network_error(urlsplit(endpoint).netloc, exc) from None
    if r.status_code in (401, 403):
        raise gated_error(repo)
    if r.status_code == 404:
        what = "repo" if r.headers.get("x-error-code") == "RepoNotFound" else "file"
        raise PullError(f"not found (404): no Hugging Face {what} {repo}:{filename}")
    if r.status_code >= 400:
        raise PullError(f"{repo}:{filename}: the hub answered HTTP {r.status_code}")
    size = r.headers.get("x-linked-size") or r.headers.get("content-length")
    etag = (r.headers.get("x-linked-etag") or r.headers.get("etag") or "").strip('"').lower()
    if not size or not size.isdigit():
        raise PullError(f"{repo}:{filename}: the hub gave no size for the file")
    sha = etag if DIGEST.match(etag.removeprefix("w/")) else None
    return RemoteFile(filename, url, int(size), sha, "huggingface", headers)


def url_file(client: httpx.Client, url: str, sha256: str | None) -> RemoteFile:
    host, shown = shown_netloc(urlsplit(url).netloc), shown_url(url)
    try:
        r = client.head(url)
    except httpx.HTTPError as exc:
        raise network_error(host, exc) from None
    except BlockedAddress as exc:
        raise PullError(f"refused: {exc}") from None
    if r.status_code == 404:
        raise PullError(f"not found (404): {shown}")
    if r.status_code >= 400:
        raise PullError(f"{shown}: the server answered HTTP {r.status_code}")
    size = r.headers.get("content-length", "")
    if not size.isdigit():
        raise PullError(f"{shown}: the server gives no size (Content-Length) for the file")
    name = urlsplit(url).path.rsplit("/", 1)[-1] or "model.gguf"
    return RemoteFile(name, url, int(size), sha256, host)
