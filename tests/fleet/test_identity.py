"""The node's persistent identity: stable id, private key kept private, OpenSSH fingerprints."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from edgebox.fleet.identity import IdentityError, load_identity, ssh_fingerprint

NO_SSHD = Path("/nonexistent/ssh_host_ed25519_key.pub")


def test_created_once_then_stable(tmp_path: Path) -> None:
    first = load_identity(tmp_path, sshd_host_key=NO_SSHD)
    again = load_identity(tmp_path, sshd_host_key=NO_SSHD)
    assert first == again
    assert len(first.node_id) == 32
    assert first.host_key_source == "edgebox"


def test_private_key_is_0600_and_never_in_public_fields(tmp_path: Path) -> None:
    identity = load_identity(tmp_path, sshd_host_key=NO_SSHD)
    mode = stat.S_IMODE(identity.ssh_private_key_path.stat().st_mode)
    assert mode == 0o600
    private = identity.ssh_private_key_path.read_text()
    assert "OPENSSH PRIVATE KEY" in private
    body = "".join(private.splitlines()[1:-1])
    shared = json.dumps(identity.public())
    assert body[:40] not in shared and "PRIVATE" not in shared
    assert set(identity.public()) == {
        "id",
        "name",
        "ssh_host_key_fingerprint",
        "ssh_host_key_source",
    }


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    assert shutil.which("ssh-keygen"), "needs ssh-keygen (Debian: apt-get install openssh-client)"
    identity = load_identity(tmp_path, sshd_host_key=NO_SSHD)
    pub = tmp_path / "ssh" / "id_ed25519.pub"
    printed = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True)
    assert printed.stdout.split()[1] == identity.host_key_fingerprint
    # ssh-keygen reads the private key we wrote, so it is a valid OpenSSH key.
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(identity.ssh_private_key_path)],
        capture_output=True,
        text=True,
    )
    assert derived.stdout.split()[:2] == identity.ssh_public_key.split()[:2]


def test_sshd_host_key_is_preferred_when_readable(tmp_path: Path) -> None:
    other = load_identity(tmp_path / "other", sshd_host_key=NO_SSHD)
    host_key = tmp_path / "ssh_host_ed25519_key.pub"
    host_key.write_text(other.ssh_public_key + "\n")
    identity = load_identity(tmp_path / "node", sshd_host_key=host_key)
    assert identity.host_key_source == "sshd"
    assert identity.host_key_fingerprint == other.host_key_fingerprint
    assert identity.host_key_fingerprint == ssh_fingerprint(other.ssh_public_key)


def test_env_chooses_home_and_rename_is_stored(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEBOX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGEBOX_SSHD_HOST_KEY", "")
    renamed = load_identity(name="spark")
    assert renamed.home == tmp_path / "home"
    assert renamed.host_key_source == "edgebox"
    assert load_identity().name == "spark"
    assert load_identity().node_id == renamed.node_id


def test_corrupt_files_give_an_actionable_error_without_key_bytes(tmp_path: Path) -> None:
    load_identity(tmp_path, sshd_host_key=NO_SSHD)
    (tmp_path / "node.json").write_text("{not json")
    with pytest.raises(IdentityError, match=r"node\.json.*delete it"):
        load_identity(tmp_path, sshd_host_key=NO_SSHD)
    (tmp_path / "node.json").unlink()
    key = tmp_path / "ssh" / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETSTUFF\n")
    with pytest.raises(IdentityError) as info:
        load_identity(tmp_path, sshd_host_key=NO_SSHD)
    assert "SECRETSTUFF" not in str(info.value)


def test_bad_public_key_line() -> None:
    with pytest.raises(ValueError, match="OpenSSH"):
        ssh_fingerprint("nonsense")
