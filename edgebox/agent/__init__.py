"""The composition root: what starts a node (`NodeAgent` from a `NodeConfig`) and what builds
a router (`build_router`), above the router, fleet and node packages that it wires together.
Commands parse options into these and call them; nothing below imports this package."""

from edgebox.agent.config import AgentError, NodeConfig
from edgebox.agent.node import NodeAgent
from edgebox.agent.router import RouterSpec, build_router

__all__ = ["AgentError", "NodeAgent", "NodeConfig", "RouterSpec", "build_router"]
