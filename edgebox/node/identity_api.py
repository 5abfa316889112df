"""`GET /edgebox/identity`: the node proves it holds its Ed25519 identity key.

A router that learned a node's address from an mDNS advert (which anyone on the LAN can send)
asks it to sign a fresh nonce; the router checks the signature against the public key that the
hub or the operator's pin says that node has. The signed message binds:

- a fixed domain string, so a signature here can never double as an SSH login signature made
  with the same key (those start with a length-prefixed session id, never with this text);
- the router's nonce (no replay) and context (what the proof is for);
- the node id, and the local address the request reached (`host:port` of this socket), so a
  rogue box cannot pass a challenge on to the real node and present the answer as its own: the
  real node would sign its own address, not the rogue's.

Without `nonce` the route answers the public part only (id, public key, fingerprint), which is
what an operator pins. The route is outside `/v1/` on purpose: a router must not send any key
to a node before the node has proved who it is.
"""

from __future__ import annotations

import base64
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgebox.api.errors import APIError
from edgebox.api.identity import canonical_address, key_fingerprint, proof_message

_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_CONTEXT = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, no spaces or newlines


@dataclass(frozen=True)
class NodeSigner:
    """The node's identity key (private part stays in memory, never in answers or logs)."""

    node_id: str
    public_key: str  # "ssh-ed25519 AAAA..."
    _key: Ed25519PrivateKey

    @classmethod
    def from_key_file(cls, node_id: str, private_key_path: Path) -> NodeSigner:
        key = serialization.load_ssh_private_key(private_key_path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{private_key_path} is not an Ed25519 key")
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return cls(node_id, public.decode(), key)

    def public(self) -> dict[str, str]:
        return {
            "id": self.node_id,
            "public_key": self.public_key,
            "key_fingerprint": key_fingerprint(self.public_key),
        }

    def prove(self, nonce: str, context: str, address: str) -> dict[str, str]:
        message = proof_message(nonce=nonce, node_id=self.node_id, context=context, address=address)
        signature = base64.b64encode(self._key.sign(message)).decode()
        return {**self.public(), "address": address, "context": context, "signature": signature}


def _local_address(request: Request) -> str:
    server = request.scope.get("server")
    if not server or server[1] is None:  # a Unix socket or a test transport: no address
        return canonical_address(socket.gethostname(), 0)
    return canonical_address(str(server[0]), int(server[1]))


async def identity(request: Request) -> Response:
    signer: NodeSigner | None = getattr(request.app.state, "signer", None)
    if signer is None:
        raise APIError(
            404, "this node has no identity key to prove (started without one)", code="no_identity"
        )
    nonce = request.query_params.get("nonce")
    if nonce is None:
        return JSONResponse(signer.public())
    if not _NONCE.fullmatch(nonce):
        raise APIError(
            400,
            "'nonce' must be 16-128 characters of A-Z, a-z, 0-9, '_' or '-'",
            param="nonce",
            code="invalid_value",
        )
    context = request.query_params.get("context", "")
    if not _CONTEXT.fullmatch(context):
        raise APIError(
            400,
            "'context' must be 1-200 printable ASCII characters without spaces",
            param="context",
            code="invalid_value",
        )
    return JSONResponse(signer.prove(nonce, context, _local_address(request)))
