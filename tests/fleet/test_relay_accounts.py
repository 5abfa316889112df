"""The relay's accounts and files as stock Debian sshd (UsePAM no, StrictModes yes) needs them.

Root only (CI runs as root): the test creates a real system account and removes it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgebox.fleet.hub.relay_runner import (
    FALLBACK_DIR,
    ensure_accounts,
    relay_dir_for,
    unlock_for_keys,
)

# CI runs as root: there a missing privilege must fail, not skip.
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="creates a system account (root)"
)


def _password_field(name: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 2)[1]
    raise AssertionError(f"{name} not in /etc/shadow")


@pytest.fixture
def account() -> Iterator[str]:
    name = "ebx" + uuid.uuid4().hex[:8]
    yield name
    subprocess.run(["userdel", name], capture_output=True, check=False)


def test_new_relay_accounts_are_not_locked_for_sshd(account: str) -> None:
    assert ensure_accounts([account]) == [account]
    # useradd leaves "!" (locked): sshd without PAM refuses such an account, keys included.
    assert _password_field(account).startswith("!")
    assert unlock_for_keys([account]) == [account]
    assert _password_field(account) == "*"  # no password works, and the account is not locked
    assert unlock_for_keys([account]) == []  # nothing left to change


def test_a_data_dir_sshd_would_refuse_moves_the_relay_files() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:  # /tmp is world-writable (1777)
        assert relay_dir_for(Path(tmp) / "hub") == FALLBACK_DIR
    base = Path(tempfile.mkdtemp(prefix="edgebox-test-", dir="/opt"))
    try:
        base.chmod(0o755)
        data = base / "hub"
        data.mkdir(mode=0o711)
        assert relay_dir_for(data) == data / "relay"
        base.chmod(0o777)  # a world-writable ancestor: sshd's StrictModes refuses it
        assert relay_dir_for(data) == FALLBACK_DIR
    finally:
        shutil.rmtree(base)
