"""`edgebox provision user@host`: install edgebox on a box over SSH and join it to the hub.

Steps, each over one asyncssh connection whose host key is checked against known_hosts (never
skipped): upload the package (a wheel built from a checkout, or a PyPI requirement), pip install
it, create a fresh token on the hub, run ``edgebox join -`` with the token on stdin (so it never
shows in the remote process list), and read the node's profile back from the hub.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from edgebox.fleet.hub.client import HubClient


class ProvisionError(Exception):
    pass


@dataclass(frozen=True)
class SshTarget:
    user: str | None
    host: str
    port: int = 22

    @classmethod
    def parse(cls, text: str, port: int = 22) -> SshTarget:
        user, _, host = text.rpartition("@")
        if not host:
            raise ProvisionError(f"cannot read SSH target {text!r}; use user@host")
        return cls(user or None, host, port)


@dataclass
class ProvisionPlan:
    target: SshTarget
    package: str = "edgebox"  # PyPI requirement, used when no wheel is given
    wheel: Path | None = None
    python: str = "python3"
    pip_args: list[str] = field(default_factory=list)
    name: str | None = None
    ttl_seconds: int = 600
    service: bool = True
    edgebox_home: str | None = None  # EDGEBOX_HOME on the box (default: its ~/.edgebox)
    known_hosts: Path | None = None
    client_keys: list[Path] = field(default_factory=list)


def _can_build_in_place() -> bool:
    """Whether this environment's setuptools can make a wheel itself (it gained bdist_wheel in
    70.1; older ones need the `wheel` package). Building in place works offline; otherwise pip
    fetches the build requirements into an isolated environment."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(p) for p in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    if (major, minor) >= (70, 1):
        return True
    try:
        version("wheel")
    except PackageNotFoundError:
        return False
    return True


def build_wheel(checkout: Path, out_dir: Path) -> Path:
    """A wheel of edgebox from a source checkout (no deps; pip on the box resolves them)."""
    isolation = ["--no-build-isolation"] if _can_build_in_place() else []
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        *isolation,
        "-q",
        "-w",
        str(out_dir),
        str(checkout),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(out_dir.glob("edgebox-*.whl"))
    if done.returncode != 0 or not wheels:
        raise ProvisionError(f"building a wheel from {checkout} failed: {done.stderr.strip()}")
    return wheels[-1]


def _env_prefix(plan: ProvisionPlan) -> str:
    return f"EDGEBOX_HOME={shlex.quote(plan.edgebox_home)} " if plan.edgebox_home else ""


async def _run(
    conn: asyncssh.SSHClientConnection, command: str, *, input: str | None = None, what: str
) -> str:
    result = await conn.run(command, input=input, check=False)
    if result.exit_status != 0:
        detail = str(result.stderr or result.stdout or "").strip().splitlines()[-3:]
        raise ProvisionError(
            f"{what} failed on the box (exit {result.exit_status}): " + " | ".join(detail)
        )
    return str(result.stdout or "")


async def provision(plan: ProvisionPlan, hub: HubClient) -> dict[str, Any]:
    """Install, join and report; returns the hub's record of the new node."""
    t = plan.target
    options: dict[str, Any] = {"port": t.port, "username": t.user}
    if plan.known_hosts is not None:
        options["known_hosts"] = str(plan.known_hosts)
    if plan.client_keys:
        options["client_keys"] = [str(k) for k in plan.client_keys]
    try:
        conn = await asyncssh.connect(t.host, **options)
    except (OSError, asyncssh.Error) as exc:
        raise ProvisionError(f"cannot open SSH to {t.host}:{t.port}: {exc}") from None
    async with conn:
        py = shlex.quote(plan.python)
        workdir = (await _run(conn, "mktemp -d", what="mktemp")).strip()
        spec = plan.package
        if plan.wheel is not None:
            spec = f"{workdir}/{plan.wheel.name}"
            # Through the session's stdin rather than SFTP, which some boxes disable.
            upload = await conn.run(
                f"cat > {shlex.quote(spec)}",
                input=plan.wheel.read_bytes(),
                encoding=None,
                check=False,
            )
            if upload.exit_status != 0:
                raise ProvisionError(f"uploading {plan.wheel.name} to the box failed")
        pip = " ".join(shlex.quote(a) for a in [*plan.pip_args, spec])
        await _run(
            conn,
            f"{py} -m pip install --quiet --disable-pip-version-check {pip}",
            what="pip install",
        )
        made = hub.request(
            "POST", "/v1/hub/tokens", json={"ttl_seconds": plan.ttl_seconds, "name": plan.name}
        )
        flags = ["--json", *([] if plan.service else ["--no-service"])]
        joined = await _run(
            conn,
            f"{_env_prefix(plan)}{py} -m edgebox join - {' '.join(flags)}",
            input=made["token"] + "\n",
            what="edgebox join",
        )
        await _run(conn, f"rm -rf {shlex.quote(workdir)}", what="cleanup")
    try:
        node_id = json.loads(joined)["node_id"]
    except (ValueError, KeyError):
        raise ProvisionError("edgebox join on the box did not report a node id") from None
    node: dict[str, Any] = hub.request("GET", f"/v1/hub/nodes/{node_id}")
    return node


def default_wheel_source() -> Path | None:
    """The checkout this edgebox runs from, when it is one (has pyproject.toml)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() else None


def wheel_from_checkout(checkout: Path) -> tuple[Path, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory(prefix="edgebox-wheel-")
    return build_wheel(checkout, Path(tmp.name)), tmp
