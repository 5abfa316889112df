"""The fleet: this node's identity, LAN discovery over mDNS, and the nodes this box knows."""
