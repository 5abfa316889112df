"""The fleet: this node's identity, LAN discovery over mDNS, the nodes this box knows, the
hub (registry, join tokens, heartbeats), the hub's SSH relay files (`relay`) and the node's
`ssh -R` tunnel to it (`tunnel`)."""
