"""Fleet fixtures: network namespaces (tests/netns.py) and edgebox processes inside them."""

from tests.netns import netns_lab

__all__ = ["netns_lab"]
