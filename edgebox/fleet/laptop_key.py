"""The laptop side of authorizing `edgebox ssh`: this laptop's key, registered at the hub.

`edgebox login` (and `edgebox ssh --setup`) make sure the hub holds the public half of
EDGEBOX_HOME/id_ed25519 for the logged-in user, creating the key on first use. The hub then
lets it through its relay, and every node that keeps hub users' keys (fleet/user_keys.py)
installs it at its next heartbeat. The private key never leaves the laptop.

A key the admin registered for the user (`edgebox hub user add NAME --key FILE`) is left in
place unless asked (`--setup` replaces it with this laptop's key): it may be the user's own
~/.ssh key, which ssh offers by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgebox.fleet._files import write_atomic
from edgebox.fleet.identity import edgebox_home
from edgebox.fleet.logins import Login
from edgebox.fleet.relay import key_material

KEY_FILE = "id_ed25519"


@dataclass(frozen=True)
class Registration:
    key_file: Path | None  # this laptop's private key, when edgebox's own is in use
    changed: bool  # the hub's record was written now
    message: str  # one line for the user


def laptop_key(home: Path | None = None, *, create: bool = False) -> tuple[Path, str] | None:
    """(private key path, public key line) of EDGEBOX_HOME/id_ed25519; made when `create`."""
    private = (home or edgebox_home()) / KEY_FILE
    public = private.with_suffix(".pub")
    if not private.exists() and create:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        line = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(private, pem, mode=0o600)
        write_atomic(public, line + b" edgebox-laptop\n", mode=0o644)
    if not private.exists() or not public.exists():
        return None
    return private, public.read_text().strip()


def register(login: Login, home: Path | None = None, *, replace: bool = False) -> Registration:
    """Make the hub hold this laptop's key for the login's user (see the module doc).
    Raises HubError when the hub cannot be asked."""
    from edgebox.fleet.hub.client import HubClient

    with HubClient(login.hub_urls, login.fingerprint, bearer=login.token) as hub:
        me = hub.request("GET", "/v1/hub/me")
        registered = me.get("ssh_public_key")
        local = laptop_key(home, create=not registered or replace)
        if local is not None and registered == key_material(local[1]):
            return Registration(
                local[0], False, f"this laptop's key is registered for {me['name']}"
            )
        if registered and not replace:
            return Registration(
                None,
                False,
                f"the hub holds the key your admin added for {me['name']}; ssh offers your own "
                "keys (`edgebox ssh --setup` registers this laptop's edgebox key instead)",
            )
        assert local is not None
        hub.request("PUT", "/v1/hub/me/key", json={"ssh_public_key": local[1]})
    return Registration(
        local[0],
        True,
        f"registered this laptop's key ({local[0]}.pub) for {me['name']}; nodes install it at "
        "their next heartbeat (a few seconds)",
    )
