"""The fleet: this node's identity, LAN discovery over mDNS, the nodes this box knows, and the
hub (registry, join tokens, heartbeats)."""
