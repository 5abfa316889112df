"""The hub: a small HTTPS control plane with a SQLite registry of nodes, join tokens and events."""
