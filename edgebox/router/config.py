"""Router configuration (TOML): nodes, placement weights, cloud upstreams, split settings,
which mDNS nodes to trust.

API keys are never in the file: a cloud upstream, a node and the router's own fleet key each
name the environment variable that holds theirs.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edgebox.router.nodes import NodeAddress, node_name, normalise_url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """US dollars per 1M tokens."""

    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)


class CloudUpstream(_Strict):
    name: str
    base_url: str  # e.g. https://api.example.com/v1
    api_key_env: str | None = None  # the NAME of the env var holding the key
    models: dict[str, str]  # local model name -> cloud model name
    when: Literal["overflow", "fallback", "always"] = "fallback"
    # overflow: burst when every local candidate queues at least this many requests
    overflow_queue_depth: int = Field(default=4, ge=0)
    prices: dict[str, Price] = {}  # by cloud model name
    # burst when every local candidate's predicted wait for a slot exceeds this (seconds)
    ttft_target_s: float | None = Field(default=None, gt=0)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ApiKey(_Strict):
    """A key clients of the router may send; the key itself lives in the variable `env`."""

    env: str
    local_only: bool = False  # requests with this key never go to a cloud upstream

    def value(self) -> str | None:
        return os.environ.get(self.env) or None


class NodeEntry(_Strict):
    url: str
    name: str | None = None
    prefill_tokens_per_s: float | None = Field(default=None, gt=0)  # seeds the split cost model
    key_env: str | None = None  # the NAME of the env var holding this node's key
    pull_key_env: str | None = None  # ... and of its pull key (`serve --pull-key`)

    def key(self) -> str | None:
        return os.environ.get(self.key_env) or None if self.key_env else None

    def pull_key(self) -> str | None:
        return os.environ.get(self.pull_key_env) or None if self.pull_key_env else None


# A node key's fingerprint as `ssh-keygen -l` prints it (and `GET /edgebox/identity` answers).
KEY_FINGERPRINT = r"^SHA256:[A-Za-z0-9+/]{43}$"


class Weights(_Strict):
    """Weights of the placement scorers (see `placement.score`)."""

    load: float = 1.0
    speed: float = 0.5
    affinity: float = 2.0


class Disagg(_Strict):
    mode: Literal["auto", "off", "always"] = "auto"
    min_prompt_tokens: int = Field(default=1024, ge=2)
    link_mbps: float = Field(default=1000.0, gt=0)  # network between nodes, megabits per second
    kv_bytes_per_token: int = Field(default=23_040, gt=0)  # SmolLM2-135M f16 K and V


class Loading(_Strict):
    """How a model loaded nowhere is brought in (`router/fetch.py`): `[loading]`."""

    # let a node download a model that is nowhere in the fleet (an `ORG/REPO:FILE.gguf` spec);
    # off by default: a client's request would otherwise make a box fetch gigabytes from
    # the internet, a cost and a trust decision that belongs to the operator
    internet: bool = False
    pull_timeout_s: float = Field(default=600.0, gt=0)  # a pull the router waits for, at most
    # a holder with this many requests queued per slot is too busy to load another model
    busy_queued_per_slot: float = Field(default=1.0, gt=0)
    lan_mbps: float = Field(default=1000.0, gt=0)  # assumed between nodes on one LAN
    wan_mbps: float = Field(default=100.0, gt=0)  # assumed between nodes not on one LAN


class RouterConfig(_Strict):
    nodes: list[NodeEntry] = []
    cloud: list[CloudUpstream] = []
    weights: Weights = Weights()
    disagg: Disagg = Disagg()
    loading: Loading = Loading()
    max_usd_per_day: float | None = Field(default=None, ge=0)  # daily cloud spend cap; None: no cap
    max_attempts: int = Field(default=3, ge=1)
    affinity_messages: int = Field(default=2, ge=1)  # the first N messages key the prefix affinity
    poll_interval_s: float = Field(default=2.0, gt=0)
    node_api_key_env: str | None = None  # the fleet key the router sends to trusted nodes
    node_pull_key_env: str | None = None  # the nodes' pull key, for pulls the router starts
    # Node-key fingerprints whose holders are trusted when found on mDNS (after they prove it).
    trusted_node_keys: list[Annotated[str, StringConstraints(pattern=KEY_FINGERPRINT)]] = []
    trust_mdns: bool = False  # route to unverified mDNS nodes too (never with a key)
    keys: list[ApiKey] = []  # when any is set (or --api-key), clients must send one
    # model name -> local GGUF path, so the router tokenizes it (bundled models need none)
    tokenizers: dict[str, str] = {}


class ConfigError(Exception):
    pass


def load_config(path: Path | None) -> RouterConfig:
    """Read a router TOML file; errors say which file and which field."""
    if path is None:
        return RouterConfig()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for upstream in data.get("cloud", []):
        if isinstance(upstream, dict) and "api_key" in upstream:
            raise ConfigError(
                f"{path}: [[cloud]] '{upstream.get('name', '?')}' has api_key; put the key in "
                "an environment variable and name it with api_key_env"
            )
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {where}: {err['msg']}") from None


def edgebox_home() -> Path:
    return Path(os.environ.get("EDGEBOX_HOME") or Path.home() / ".edgebox")


def with_trust(config: RouterConfig, pins: list[str], trust_lan: bool) -> RouterConfig:
    """`config` plus the command line's `--trust-node` fingerprints and `--trust-lan`."""
    if not pins and not trust_lan:
        return config
    data = config.model_dump()
    data["trusted_node_keys"] = [*config.trusted_node_keys, *pins]
    data["trust_mdns"] = config.trust_mdns or trust_lan
    try:
        return RouterConfig.model_validate(data)
    except ValidationError:
        bad = next(p for p in pins if not re.fullmatch(KEY_FINGERPRINT, p))
        raise ConfigError(
            f"--trust-node {bad!r} is not a node key fingerprint (SHA256: and 43 base64 "
            "characters, as GET /edgebox/identity shows it)"
        ) from None


def configured_nodes(config: RouterConfig) -> list[NodeAddress]:
    """The `[[nodes]]` entries as addresses (trusted: the operator named them), each with its
    own key when it names one."""
    return [
        NodeAddress(
            n.name or node_name(n.url),
            normalise_url(n.url),
            n.prefill_tokens_per_s,
            key=n.key(),
            pull_key=n.pull_key(),
        )
        for n in config.nodes
    ]
