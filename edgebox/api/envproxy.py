"""The environment's HTTP proxy for the internet, never for the LAN.

httpx sends every request through `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` when they are set,
127.0.0.1 and 192.168.x.y included (unless `NO_PROXY` names them). A router on a box with a
corporate proxy would then send its nodes' traffic, bearer keys, pull keys and prompts with it,
to the proxy (and reach no loopback node at all). `LanDirectTransport` keeps the proxy for
public hosts (a cloud upstream behind the proxy still works) and connects directly to
loopback, private and link-local addresses, `localhost`, `.local` names (mDNS) and
single-label names; `NO_PROXY` is honoured as well.
"""

from __future__ import annotations

import ipaddress
import urllib.request

import httpx


def lan_host(host: str) -> bool:
    """Whether `host` (a URL's host) names this box or its LAN."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.rstrip(".").lower()
        return name == "localhost" or name.endswith((".localhost", ".local")) or "." not in name
    mapped = getattr(ip, "ipv4_mapped", None)
    return not (mapped or ip).is_global


class LanDirectTransport(httpx.AsyncBaseTransport):
    """Direct to the LAN; public hosts through the environment's proxy for their scheme."""

    def __init__(self, limits: httpx.Limits) -> None:
        env = urllib.request.getproxies_environment()
        self._direct = httpx.AsyncHTTPTransport(limits=limits)
        self._proxied: dict[str, httpx.AsyncHTTPTransport] = {}
        for scheme in ("http", "https"):
            url = env.get(scheme) or env.get("all")
            if url:
                self._proxied[scheme] = httpx.AsyncHTTPTransport(limits=limits, proxy=url)

    def _for(self, url: httpx.URL) -> httpx.AsyncHTTPTransport:
        proxied = self._proxied.get(url.scheme)
        if proxied is None or lan_host(url.host):
            return self._direct
        if urllib.request.proxy_bypass(url.host):  # NO_PROXY (the environment's, on Linux)
            return self._direct
        return proxied

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._for(request.url).handle_async_request(request)

    async def aclose(self) -> None:
        await self._direct.aclose()
        for transport in self._proxied.values():
            await transport.aclose()
