"""The hub API's request bodies (pydantic, extra fields refused) and the observed API address."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NODE_NAME = r"^[A-Za-z0-9._-]+$"
TOKEN_ID = r"^[A-Za-z0-9_-]+$"
# One OpenSSH public key line: type, base64, an optional printable comment; no line breaks.
KEY_LINE = r"^[a-z0-9@.-]+ [A-Za-z0-9+/]+={0,3}( [ -~]*)?$"
NODE_KEY_LINE = r"^ssh-[a-z0-9-]+ [A-Za-z0-9+/]+={0,3}( [ -~]*)?$"


def safe_name(hostname: str) -> str:
    """A node name from a box's reported hostname: only [A-Za-z0-9._-], at most 63 chars
    (names reach logs, relay key comments and laptops' ssh_config Host lines)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", hostname).strip("-.")[:63]
    return cleaned or "node"


class JoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token_id: str = Field(min_length=1, max_length=64, pattern=TOKEN_ID)
    secret: str = Field(min_length=1, max_length=256)
    name: str | None = Field(default=None, min_length=1, max_length=63, pattern=NODE_NAME)
    ssh_public_key: str = Field(min_length=16, max_length=4096, pattern=NODE_KEY_LINE)
    host_key: str | None = Field(default=None, max_length=4096, pattern=KEY_LINE)
    profile: dict[str, Any]
    models: list[Any] = Field(default_factory=list)


class NodeApi(BaseModel):
    """Where the node's OpenAI API listens: the port, never a host (see `observed_api_url`)."""

    model_config = ConfigDict(extra="forbid")
    port: int = Field(ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    loopback_only: bool = False  # bound to 127.0.0.1/::1: reachable only on the node's own box


ACCOUNT = r"^[a-z_][a-z0-9_.-]{0,31}$"  # a POSIX account name
MAX_BEAT_BLOBS = 1024  # digests per heartbeat: a box holds far fewer model files


class HeartbeatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    telemetry: dict[str, Any] = Field(default_factory=dict)
    models: list[Any] = Field(default_factory=list)
    api: NodeApi | None = None
    # the account hub users' SSH keys are installed for on the node (None: it keeps them out)
    ssh_user: str | None = Field(default=None, pattern=ACCOUNT)
    peer_keys: bool = False  # a `serve --fleet` node: its peers' API keys in the answer
    # the model blobs (sha256) the node's store holds, for `GET /v1/hub/blobs/{sha256}`
    blobs: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=list, max_length=MAX_BEAT_BLOBS
    )


def observed_api_url(peer: str | None, api: NodeApi | None) -> str | None:
    """The node's API address as this hub sees it: the heartbeat's TCP peer address with the
    node's port. The host is never taken from the node, so a node cannot point routers at
    arbitrary hosts (proxy headers are off for the same reason). A loopback-only API is
    recorded only when the beat itself came over loopback (node and hub on one box)."""
    if api is None or not peer:
        return None
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d
    if api.loopback_only and not ip.is_loopback:
        return None
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{api.scheme}://{host}:{api.port}"


USER_KEY_LINE = r"^(ssh|ecdsa|sk)-\S+ "


class UserAddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63, pattern=NODE_NAME)
    # None: the user's `edgebox login` registers its laptop's key
    ssh_public_key: str | None = Field(
        default=None, min_length=16, max_length=4096, pattern=USER_KEY_LINE
    )


class UserKeyRequest(BaseModel):
    """A user's own laptop key (`PUT /v1/hub/me/key`, with the user's login token)."""

    model_config = ConfigDict(extra="forbid")
    ssh_public_key: str = Field(min_length=16, max_length=4096, pattern=USER_KEY_LINE)


class TokenCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_seconds: float = Field(default=1800, gt=0, le=30 * 86400)
    name: str | None = Field(default=None, min_length=1, max_length=63, pattern=NODE_NAME)


class Statement(BaseModel):
    """What a node signs to re-register (fleet/proof.py)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    purpose: str = Field(max_length=64)
    hub: str = Field(max_length=128)
    key: str = Field(min_length=16, max_length=4096, pattern=NODE_KEY_LINE)
    new_key: str = Field(min_length=16, max_length=4096, pattern=NODE_KEY_LINE)
    host_key: str | None = Field(default=..., max_length=4096, pattern=KEY_LINE)
    ts_ms: int = Field(ge=0)


class RejoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    statement: Statement
    signature: str = Field(min_length=1, max_length=256)
    new_key_signature: str | None = Field(default=None, min_length=1, max_length=256)
