"""The node's service unit, so a joined box keeps serving across reboots.

Rendering is pure (tested by content); installing writes the file and asks systemd/launchd to
start it, only where that service manager exists.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

UNIT_NAME = "edgebox-node.service"
LAUNCHD_LABEL = "dev.edgebox.node"


# A fleet member serves where the fleet's routers reach it; /v1 then takes the key the hub
# minted for this node at join (kept in fleet.json, never on the command line).
SERVE_ARGS = ["serve", "--host", "0.0.0.0"]


def node_command(python: str | None = None, pipx: str | None = None) -> list[str]:
    """What the service runs: this interpreter's edgebox, serving on every interface and
    beating to the hub.

    Under `pipx run` the interpreter lives in a cache pipx prunes, so the service runs the same
    version through `pipx run` instead (pipx re-creates the cache when needed).
    """
    python = python or sys.executable
    if ephemeral_python(python) and pipx:
        from edgebox import __version__

        return [pipx, "run", "--spec", f"edgebox=={__version__}", "edgebox", *SERVE_ARGS]
    return [python, "-m", "edgebox", *SERVE_ARGS]


def manual_command() -> str:
    """What to run by hand where no service could be installed."""
    return shlex.join(["edgebox", *SERVE_ARGS])


def render_systemd_unit(command: list[str], *, home: Path, user: str | None = None) -> str:
    lines = [
        "[Unit]",
        "Description=edgebox node agent (serves models, heartbeats to the hub)",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={shlex.join(command)}",
        f'Environment="EDGEBOX_HOME={home}"',
        "Restart=on-failure",
        "RestartSec=5",
    ]
    if user:
        lines.append(f"User={user}")
    lines += ["", "[Install]", f"WantedBy={'multi-user' if user else 'default'}.target", ""]
    return "\n".join(lines)


def render_launchd_plist(command: list[str], *, home: Path) -> str:
    args = "".join(f"\n    <string>{escape(a)}</string>" for a in command)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>{LAUNCHD_LABEL}</string>
  <key>ProgramArguments</key>
  <array>{args}
  </array>
  <key>EnvironmentVariables</key>
  <dict>
    <key>EDGEBOX_HOME</key>
    <string>{escape(str(home))}</string>
  </dict>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <true/>
  <key>StandardErrorPath</key>
  <string>{escape(str(home / "node.log"))}</string>
</dict>
</plist>
"""


class ServiceError(Exception):
    pass


@dataclass(frozen=True)
class ServiceResult:
    path: Path | None
    started: bool
    message: str


def ephemeral_python(python: str) -> bool:
    """`pipx run` keeps its venvs in a cache it prunes; a service must not point there."""
    return "/pipx/.cache/" in python or "/pipx/cache/" in python


def install(home: Path, *, start: bool = True, user: str | None = None) -> ServiceResult:
    """Install (and start) the node service for this platform; skips where none applies.

    Raises ServiceError with what went wrong (no init system running, no permission...); a
    unit file written before the failure is removed again, so nothing is left half-installed.
    """
    written: list[Path] = []
    try:
        return _install(home, start=start, user=user, written=written)
    except (OSError, subprocess.CalledProcessError) as exc:
        for path in written:
            path.unlink(missing_ok=True)
        removed = f"; removed {written[0]} again" if written else ""
        raise ServiceError(f"installing the node service failed: {_reason(exc)}{removed}") from None


def _reason(exc: OSError | subprocess.CalledProcessError) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return f"`{shlex.join(str(a) for a in exc.cmd)}` exited with {exc.returncode}"
    return str(exc)


def _install(home: Path, *, start: bool, user: str | None, written: list[Path]) -> ServiceResult:
    command = node_command(pipx=shutil.which("pipx"))
    if sys.platform == "darwin":
        path = Path.home() / "Library/LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(path)
        path.write_text(render_launchd_plist(command, home=home))
        if start:
            subprocess.run(["launchctl", "load", "-w", str(path)], check=True)
        return ServiceResult(path, start, f"launchd agent {path}")
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return ServiceResult(None, False, f"no systemctl here; run `{manual_command()}` yourself")
    system_wide = os.geteuid() == 0
    scope = [] if system_wide else ["--user"]
    if system_wide:
        path = Path("/etc/systemd/system") / UNIT_NAME
    else:
        path = Path.home() / ".config/systemd/user" / UNIT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():  # an earlier install's unit is replaced, and kept on failure
        written.append(path)
    path.write_text(render_systemd_unit(command, home=home, user=user))
    subprocess.run([systemctl, *scope, "daemon-reload"], check=True)
    enable = [systemctl, *scope, "enable", *(["--now"] if start else []), UNIT_NAME]
    subprocess.run(enable, check=True)
    return ServiceResult(path, start, f"systemd unit {path}")
