"""The journey: the docs' commands, run in order on the machines of world.py."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.journeys.docsteps import Step, collect, match_output, substitute
from tests.journeys.world import HUB_ADDRESS, LAN, REPO, World, missing_prerequisites

DOCS = ["README.md", "docs/quickstart.md"]


@dataclass
class Journey:
    world: World
    steps: dict[str, Step]
    logs: Path
    bound: dict[str, str] = field(default_factory=dict)
    passed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    background: dict[str, tuple[subprocess.Popen[bytes], Path]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def require(self, *ids: str) -> None:
        """Fail at once (not after timeouts) when an earlier step this one builds on failed."""
        missing = [i for i in ids if i not in self.passed]
        if missing:
            pytest.fail(f"an earlier journey step failed or did not run: {missing}", pytrace=False)

    def run(self, step_id: str, timeout: float = 120) -> str:
        """Run one documented step as the docs say; returns what it printed."""
        step = self.steps[step_id]
        try:
            output = self._run(step, timeout)
        except BaseException:
            self.failed.add(step_id)
            raise
        self.passed.add(step_id)
        self.outputs[step_id] = output
        return output

    def _run(self, step: Step, timeout: float) -> str:
        if step.lang != "console":
            return self._script(step, timeout)
        if step.background is not None:
            assert len(step.commands) == 1, f"{step.source}: a background step has one command"
            return self._background(step, timeout)
        printed = []
        for command in step.commands:
            text = substitute(command.text, self.bound)
            machine = self.world[command.machine]
            started = time.monotonic()
            done = subprocess.run(
                machine.argv(text, root=command.root),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
            took = time.monotonic() - started
            self._log(
                step, f"{command.machine}{'#' if command.root else '$'} {text}", done.stdout, took
            )
            assert done.returncode == 0, (
                f"{step.source} ({step.id}): `{text}` on {command.machine} exited "
                f"{done.returncode}:\n{done.stdout[-4000:]}"
            )
            self.bound.update(match_output(command.expected, done.stdout, self.bound))
            printed.append(done.stdout)
        return "\n".join(printed)

    def _background(self, step: Step, timeout: float) -> str:
        command = step.commands[0]
        text = substitute(command.text, self.bound)
        log = self.logs / f"{step.id}.log"
        proc = self.world[command.machine].start(text, log, root=command.root)
        self.background[step.id] = (proc, log)
        ready = step.background or ""
        deadline = time.monotonic() + timeout
        while ready not in (content := log.read_text(errors="replace")):
            assert proc.poll() is None, (
                f"{step.source} ({step.id}): `{text}` exited {proc.returncode}:\n{content[-4000:]}"
            )
            assert time.monotonic() < deadline, (
                f"{step.source} ({step.id}): no {ready!r} from `{text}` in {timeout} s:\n"
                f"{content[-4000:]}"
            )
            time.sleep(0.2)
        self.bound.update(match_output(command.expected, content, self.bound))
        return content

    def _script(self, step: Step, timeout: float) -> str:
        machine = self.world[step.options["on"]]
        script = machine.dir / f"{step.id}.{'py' if step.lang == 'python' else 'sh'}"
        script.write_text(step.script)
        script.chmod(0o644)
        runner = "python" if step.lang == "python" else "bash -e"
        root = step.options.get("as", "root") == "root"
        started = time.monotonic()
        done = subprocess.run(
            machine.argv(f"{runner} {script}", root=root),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        self._log(
            step, f"{step.lang} script on {machine.role}", done.stdout, time.monotonic() - started
        )
        assert done.returncode == 0, (
            f"{step.source} ({step.id}) exited {done.returncode}:\n{done.stdout[-4000:]}"
        )
        expect = step.options.get("expect")
        assert expect is None or expect in done.stdout, (
            f"{step.source} ({step.id}): no {expect!r} in its output:\n{done.stdout[-4000:]}"
        )
        return done.stdout

    def _log(self, step: Step, what: str, output: str, took: float) -> None:
        with (self.logs / "journey.log").open("a") as log:
            log.write(f"\n=== {step.id} ({step.source}) {took:.1f} s\n{what}\n{output}")

    def wait_http(self, role: str, url: str, timeout: float = 60) -> None:
        """Wait until `url` answers on `role` (a server prints its banner before it listens)."""
        deadline = time.monotonic() + timeout
        while self.world[role].run(f"curl -sf -o /dev/null {url}", timeout=10).returncode != 0:
            assert time.monotonic() < deadline, f"{url} did not answer on {role} in {timeout} s"
            time.sleep(0.3)

    def stop(self, step_id: str, timeout: float = 20) -> int:
        """Ctrl-C a background step, as its reader would."""
        import os
        import signal

        proc, _ = self.background.pop(step_id)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(5)


@pytest.fixture(scope="session")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    missing = missing_prerequisites()
    if missing:
        pytest.fail("the journey tests need: " + "; ".join(missing), pytrace=False)
    keep = os.environ.get("EDGEBOX_JOURNEY_LOGS")  # a directory that outlives pytest's tmp dirs
    logs = Path(keep) if keep else tmp_path_factory.mktemp("journey")
    logs.mkdir(parents=True, exist_ok=True)
    world = World.build(logs)
    try:
        given = {"HUB": HUB_ADDRESS, "BOX1-LAN": LAN["box1"], "BOX2-LAN": LAN["box2"]}
        yield Journey(world, collect(REPO, DOCS), logs, given)
    finally:
        world.close()
        print(f"journey logs in {logs}")
