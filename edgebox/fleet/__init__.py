"""The fleet: registry, hub control plane, join tokens, node identity and heartbeats."""
