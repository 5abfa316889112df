"""The hub's identity: an Ed25519 key with a self-signed TLS certificate, and the admin key.

Join tokens carry the certificate's sha256 fingerprint, so a node trusts exactly this hub and no
certificate authority. Everything lives in the hub's data directory and is made once.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from edgebox.fleet._files import write_atomic
from edgebox.fleet.identity import edgebox_home

CERT_FILE = "hub-cert.pem"
KEY_FILE = "hub-key.pem"
ADMIN_KEY_FILE = "admin.key"
HUB_FILE = "hub.json"  # where the local CLI finds the running hub's address and fingerprint


def default_data_dir() -> Path:
    return edgebox_home() / "hub"


def fingerprint_der(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class HubIdentity:
    cert_path: Path
    key_path: Path
    fingerprint: str
    admin_key_path: Path

    def admin_key(self) -> str:
        return self.admin_key_path.read_text().strip()

    def signing_key(self) -> Ed25519PrivateKey:
        """The certificate's key, which also signs blob grants (api/blob_grant.py)."""
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{self.key_path} is not an Ed25519 key")
        return key


def _self_signed(key: Ed25519PrivateKey, names: list[str]) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgebox-hub")])
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        # Trust comes from the pinned fingerprint, not from expiry; a long life avoids re-pinning.
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, None)
    )


def load_or_create(data_dir: Path) -> HubIdentity:
    """The hub's key, certificate and admin key, created on first start (files 0600)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    admin_path = data_dir / ADMIN_KEY_FILE
    if not (cert_path.exists() and key_path.exists()):
        key = Ed25519PrivateKey.generate()
        cert = _self_signed(key, ["localhost", "127.0.0.1", "::1", socket.gethostname()])
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(key_path, pem, mode=0o600)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if not admin_path.exists():
        write_atomic(admin_path, (secrets.token_urlsafe(32) + "\n").encode(), mode=0o600)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    return HubIdentity(cert_path, key_path, fingerprint_der(der), admin_path)
