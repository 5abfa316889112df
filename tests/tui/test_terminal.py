"""`edgebox top` in a real pseudo-terminal: `s` suspends the app, hands the terminal to
`edgebox ssh NODE`, and resumes when it exits; `q` quits cleanly."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.conftest import free_port


class Terminal:
    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 30, cols: int = 120):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.seen = b""

    def expect(self, needle: bytes, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} never appeared; the terminal showed:\n{self.tail()}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    assert needle in self.seen, self.tail()

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def tail(self) -> str:
        return self.seen[-3000:].decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


def test_ssh_suspends_the_app_runs_in_the_terminal_and_resumes(tmp_path: Path) -> None:
    home = tmp_path / "home"  # no fleet joined: `edgebox ssh` says so and exits 1
    env = {**os.environ, "EDGEBOX_HOME": str(home), "TERM": "xterm-256color", "COLUMNS": "120"}
    nowhere = f"http://127.0.0.1:{free_port()}"  # an unreachable node still gets a row
    term = Terminal(
        [sys.executable, "-m", "edgebox", "top", "--node", nowhere, "--interval", "0.5"], env
    )
    try:
        term.expect(b"unreachable")
        term.send(b"s")
        term.expect(b"join a fleet first")  # `edgebox ssh` wrote to the real terminal
        term.seen = b""
        term.expect(b"exited with 1")  # the app came back and says how ssh ended
        term.send(b"q")
        assert term.proc.wait(15) == 0
    finally:
        term.close()
