"""The tier marking itself (tests/tiers.py): what counts as starting a process, and the guard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import start_node
from tests.tiers import _Scan


def _pure(x: int) -> int:
    return x + 1


def _starts_a_node(tmp_path: Path) -> None:
    start_node(tmp_path)


def _through_a_helper(tmp_path: Path) -> None:
    _starts_a_node(tmp_path)


def _names_only_an_exception() -> type[Exception]:
    try:
        return ValueError
    except subprocess.TimeoutExpired:
        return subprocess.TimeoutExpired


def _hands_over_the_interpreter() -> list[str]:
    return [sys.executable, "-c", "pass"]


class _Server:
    def start(self) -> None:
        subprocess.Popen(["true"])


def _uses_the_class() -> None:
    _Server().start()


def _nested() -> None:
    def inner() -> None:
        subprocess.run(["true"], check=False)

    inner()


@pytest.mark.parametrize(
    ("function", "starts"),
    [
        (_pure, False),
        (_names_only_an_exception, False),
        (_starts_a_node, True),
        (_through_a_helper, True),
        (_hands_over_the_interpreter, True),
        (_uses_the_class, True),
        (_nested, True),
    ],
)
def test_the_scan_follows_test_code_to_process_starts(function: object, starts: bool) -> None:
    assert _Scan().function(function) is starts  # type: ignore[arg-type]


def test_this_module_is_in_the_fast_tier(request: pytest.FixtureRequest) -> None:
    # It names start_node and subprocess, but none of its tests calls them.
    assert request.node.get_closest_marker("system") is None


def test_a_fast_tier_test_that_starts_a_process_fails_naming_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest("pytest_plugins = ['tests.tiers']")
    pytester.makepyfile(
        test_hidden="""
        import shutil, subprocess

        def test_hidden():
            # the scan cannot see this start: it is made through an alias
            run = getattr(subprocess, "r" + "un")
            run([shutil.which("true")], check=True)

        def test_quiet():
            assert 1 + 1 == 2
        """
    )
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-p", "no:textual-snapshot", "-m", "not system"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_hidden is in the fast tier but started 1 process*"])
