"""The node identity proof's wire format, which a node signs and a router verifies.

The signed message binds a fixed domain string (so it can never double as an SSH login
signature made with the same key), the router's nonce and context, the node id, and the local
address the request reached (see `edgebox.node.identity_api` for the route and the reasons).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress

PROOF_DOMAIN = "edgebox-node-identity-proof-v1"
IDENTITY_PATH = "/edgebox/identity"


def canonical_address(host: str, port: int) -> str:
    """`host:port` as both sides write it: IPs normalised (an IPv4-mapped IPv6 address as IPv4,
    IPv6 in brackets), names lower-cased."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return f"{host.lower()}:{port}"
    mapped = getattr(ip, "ipv4_mapped", None)
    ip = mapped or ip
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def proof_message(*, nonce: str, node_id: str, context: str, address: str) -> bytes:
    """The bytes a node signs; every field is free of newlines (checked where they come in)."""
    return "\n".join((PROOF_DOMAIN, nonce, node_id, context, address)).encode()


def key_fingerprint(public_key_line: str) -> str:
    """SHA256 fingerprint of an OpenSSH public key line, as `ssh-keygen -l` prints it."""
    blob = base64.b64decode(public_key_line.split()[1], validate=True)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
