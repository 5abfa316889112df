"""Fleet fixtures: network namespaces (tests/netns.py) and edgebox processes inside them."""

from collections.abc import Iterator

import pytest

from tests.netns import netns_lab

__all__ = ["netns_lab", "own_host_keys"]


@pytest.fixture(autouse=True)
def own_host_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nodes joined in-process from this one box report no sshd host key (unless a test names
    one): the hub refuses a second live node with the same host key, and on a box with
    /etc/ssh/ssh_host_ed25519_key.pub every test node would otherwise report that one."""
    import os

    if "EDGEBOX_SSHD_HOST_KEY" not in os.environ:
        monkeypatch.setenv("EDGEBOX_SSHD_HOST_KEY", "")
    yield
