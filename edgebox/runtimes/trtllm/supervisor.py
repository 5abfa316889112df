"""Keep one OpenAI-compatible server process alive on a loopback port.

The child gets a free 127.0.0.1 port, is ready once `GET /health` answers 200, and is started
again with exponential backoff when it dies (a CUDA fault in the engine takes only the child
down). Backoff doubles from `backoff_initial` up to `backoff_max` and resets once a child has
stayed healthy for `stable_after` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

CommandFactory = Callable[[int], Sequence[str]]  # port -> argv


class ServerUnavailable(Exception):
    """The supervised server is not (yet, or any more) answering."""


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class SupervisorConfig:
    startup_timeout: float = 600.0  # engines load and allocate KV for minutes on big models
    health_interval: float = 0.2
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    stable_after: float = 60.0
    stop_timeout: float = 15.0


def next_backoff(current: float, config: SupervisorConfig) -> float:
    """The wait before the next restart after one that waited `current` (0: first failure)."""
    return config.backoff_initial if current <= 0 else min(config.backoff_max, current * 2)


class ServerSupervisor:
    """Starts the child, watches it from a thread, restarts it, and stops it on `close`."""

    def __init__(
        self,
        command: CommandFactory,
        *,
        log_path: Path | None = None,
        config: SupervisorConfig | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self._command = command
        self._log_path = log_path
        self._env = env
        self.config = config or SupervisorConfig()
        self.port = 0
        self.restarts = 0
        self.last_exit: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="edgebox-supervisor", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start the child and wait until it is healthy; raises ServerUnavailable if it is not."""
        self._spawn()
        if not self._wait_healthy(self.config.startup_timeout):
            code = self._proc.poll() if self._proc else None
            self._terminate()
            raise ServerUnavailable(
                f"{self._argv_name()} did not become healthy within "
                f"{self.config.startup_timeout:.0f} s (exit code {code}){self._log_hint()}"
            )
        self._ready.set()
        self._watcher.start()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        self._closing.set()
        self._ready.clear()
        self._terminate()
        if self._watcher.is_alive():
            self._watcher.join(timeout=self.config.stop_timeout + 5)
        self._terminate()  # a child the watcher spawned while we were stopping

    def _spawn(self) -> None:
        self.port = free_loopback_port()
        argv = list(self._command(self.port))
        out = self._log_path.open("ab") if self._log_path else subprocess.DEVNULL
        try:
            with self._lock:
                # own process group, so stopping it also stops the workers it forks (MPI ranks)
                self._proc = subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **(self._env or {})},
                    start_new_session=True,
                )
        finally:
            if self._log_path:
                out.close()  # type: ignore[union-attr]
        log.info("started %s (pid %s) on port %s", argv[0], self._proc.pid, self.port)

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline and not self._closing.is_set():
                if self._proc is None or self._proc.poll() is not None:
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.base_url + "/health").status_code == 200:
                        return True
                time.sleep(self.config.health_interval)
        return False

    def _watch(self) -> None:
        backoff = 0.0
        while not self._closing.is_set():
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if self._closing.is_set():
                return
            self._ready.clear()
            self.last_exit = code
            if time.monotonic() - started >= self.config.stable_after:
                backoff = 0.0
            backoff = next_backoff(backoff, self.config)
            log.warning("%s exited with %s; restarting in %.0f s", self._argv_name(), code, backoff)
            if self._closing.wait(backoff):
                return
            self._spawn()
            self.restarts += 1
            if self._wait_healthy(self.config.startup_timeout):
                self._ready.set()
            else:
                self._terminate()  # the next round waits longer

    def _terminate(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.config.stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _argv_name(self) -> str:
        return Path(self._command(self.port)[0]).name if self.port else "server"

    def _log_hint(self) -> str:
        return f"; its log is {self._log_path}" if self._log_path else ""
