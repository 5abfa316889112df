"""What the internet says about a file before it is downloaded: its size and digest from a
HEAD request (Hugging Face's `X-Linked-Size` and `X-Linked-Etag`, a URL's Content-Length), or
why it cannot be had (404, offline, gated)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import httpx

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


def http_client() -> httpx.Client:
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    return httpx.Client(timeout=timeout, limits=limits, follow_redirects=True, trust_env=False)


def _network_error(where: str, exc: httpx.HTTPError) -> PullError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return Offline(
            f"offline: cannot reach {where} ({type(exc).__name__}); "
            "check the network, or pull from a peer or a local path"
        )
    return PullError(f"{where} did not answer properly ({type(exc).__name__})")


def _hf_headers() -> tuple[tuple[str, str], ...]:
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
    headers = _hf_headers()
    try:
        r = client.head(url, headers=dict(headers), follow_redirects=False)
        if r.is_redirect and "x-linked-size" not in r.headers:
            r = client.head(url, headers=dict(headers))
    except httpx.HTTPError as exc:
        raise _network_error(urlsplit(endpoint).netloc, exc) from None
    if r.status_code in (401, 403):
        raise PullError(
            f"{repo} is private or gated: accept its licence and log in (`hf auth login`)"
        )
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
    host = urlsplit(url).netloc
    try:
        r = client.head(url)
    except httpx.HTTPError as exc:
        raise _network_error(host, exc) from None
    if r.status_code == 404:
        raise PullError(f"not found (404): {url}")
    if r.status_code >= 400:
        raise PullError(f"{url}: the server answered HTTP {r.status_code}")
    size = r.headers.get("content-length", "")
    if not size.isdigit():
        raise PullError(f"{url}: the server gives no size (Content-Length) for the file")
    name = urlsplit(url).path.rsplit("/", 1)[-1] or "model.gguf"
    return RemoteFile(name, url, int(size), sha256, host)
