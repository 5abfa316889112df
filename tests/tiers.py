"""The two test tiers: `system` tests start real processes, the fast tier is everything else.

A test is marked `system` at collection when it, a fixture it uses, or any helper, class or
fixture they reach in tests/ (followed through the bytecode's global names) starts a process:
`subprocess.Popen/run/...`, `asyncio.create_subprocess_*`, `multiprocessing`, `os.fork`, or
names `sys.executable` (to have edgebox run it, e.g. a stand-in server). That
covers edgebox node/router/hub subprocesses, sshd, network namespaces (`ip netns`) and model
loads in child processes without a list to keep up to date: a new test that calls `start_node`
or uses the `node` fixture is a system test by construction. `@pytest.mark.system` marks a test
by hand (for one whose process is started inside edgebox's own code, out of sight of the scan).

`@pytest.mark.slow` is for a test that starts no process but does seconds of real-model work
in process (long or repeated generation, a second model load); it counts as system too.

So that the fast tier stays fast and true, in a run that picks a tier (`-m "not system"`) a test
not marked `system` that starts a process anyway fails, naming the command, and says how to mark
it: the fast tier runs only in-process tests, and a misplaced test cannot hide there.
"""

from __future__ import annotations

import dis
import inspect
import os
import platform
import subprocess
from collections.abc import Callable, Iterator
from types import CodeType, FunctionType, ModuleType
from typing import Any

import pytest

MARKER = "system"
# module attribute -> names that start a process (subprocess.run, asyncio.create_subprocess_exec)
_SPAWNING = {
    "subprocess": {"Popen", "run", "call", "check_call", "check_output", "getoutput"},
    "asyncio": {"create_subprocess_exec", "create_subprocess_shell"},
    "os": {"fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "execv"},
    "sys": {"executable"},  # a test that names the interpreter hands it to something to run
}
_SPAWNING_OBJECTS = {subprocess.Popen, subprocess.run, subprocess.call, os.system, os.fork}
_SPAWNING_OBJECTS |= {subprocess.check_call, subprocess.check_output}


class _Scan:
    """Memoised 'does this reach a process start?' over functions, classes and modules."""

    def __init__(self) -> None:
        self._seen: dict[int, bool] = {}

    def function(self, func: Callable[..., Any]) -> bool:
        func = inspect.unwrap(func)
        code = getattr(func, "__code__", None)
        if code is None:
            return False
        key = id(code)
        if key not in self._seen:
            self._seen[key] = False  # a cycle (recursion) starts nothing by itself
            self._seen[key] = self._code(code, getattr(func, "__globals__", {}))
        return self._seen[key]

    def _code(self, code: CodeType, names: dict[str, Any]) -> bool:
        previous: Any = None
        for ins in dis.get_instructions(code):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                previous = names.get(ins.argval)
                if self._reaches(previous):
                    return True
                continue
            if ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and isinstance(previous, ModuleType):
                module = previous.__name__.split(".")[0]
                if ins.argval in _SPAWNING.get(module, ()) or module == "multiprocessing":
                    return True
                previous = getattr(previous, ins.argval, None)
                if not isinstance(previous, ModuleType) and self._reaches(previous):
                    return True
                continue
            previous = None
        return any(
            self._code(const, names) for const in code.co_consts if isinstance(const, CodeType)
        )

    def _reaches(self, obj: Any) -> bool:
        """A global a test's code names: a spawning callable, or test code that reaches one."""
        if isinstance(obj, ModuleType):
            return obj.__name__.split(".")[0] == "multiprocessing"
        try:
            if obj in _SPAWNING_OBJECTS:
                return True
        except TypeError:  # unhashable
            return False
        if not _is_test_code(obj):
            return False
        if isinstance(obj, type):
            return any(self._member(m) for m in vars(obj).values())
        return callable(obj) and self.function(obj)

    def _member(self, member: Any) -> bool:
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        if isinstance(member, property):
            return any(self.function(f) for f in (member.fget, member.fset) if f is not None)
        return isinstance(member, FunctionType) and self.function(member)


def _is_test_code(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == "tests" or module.startswith("tests.") or module == "conftest"


def _fixture_functions(item: pytest.Item) -> Iterator[Callable[..., Any]]:
    info = getattr(item, "_fixtureinfo", None)
    for defs in getattr(info, "name2fixturedefs", {}).values():
        for fixturedef in defs:
            func = getattr(fixturedef, "func", None)
            if func is not None and _is_test_code(inspect.unwrap(func)):
                yield func


def is_system_test(item: pytest.Item, scan: _Scan) -> bool:
    """Marked system or slow by hand, or its code or a fixture of it reaches a process start."""
    if item.get_closest_marker(MARKER) or item.get_closest_marker("slow"):
        return True
    function = getattr(item, "function", None)
    if function is not None and scan.function(function):
        return True
    return any(scan.function(f) for f in _fixture_functions(item))


_GUARDED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    # The guard judges runs that pick a tier (-m "not system", -m system). A whole-suite run
    # has nothing to keep honest, and a process a system test left behind (a supervisor
    # restarting its child) could otherwise be blamed on whichever test runs next.
    config.stash[_GUARDED] = "system" in (config.getoption("markexpr", "") or "")
    # The openai SDK's first request reads platform.platform(), which runs `uname -p` once per
    # process; read it now, so no test is blamed for the library's one-time lookup.
    platform.platform()
    _install_guard()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    scan = _Scan()
    for item in items:
        if is_system_test(item, scan) and not item.get_closest_marker(MARKER):
            item.add_marker(MARKER)


# ---- the guard: a fast-tier test that starts a process fails ---------------------------------

_current: dict[str, Any] = {"item": None, "spawned": []}


def _install_guard() -> None:
    """Wrap Popen once: record what a test outside the system tier starts (asyncio's and most
    of multiprocessing's process starts go through it too)."""
    if getattr(subprocess.Popen, "_edgebox_tier_guard", False):
        return
    original = subprocess.Popen.__init__

    def guarded(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        original(self, args, *rest, **kwargs)
        item = _current["item"]
        if item is not None and not item.get_closest_marker(MARKER):
            _current["spawned"].append(args if isinstance(args, str) else list(map(str, args)))

    subprocess.Popen.__init__ = guarded  # type: ignore[method-assign]
    subprocess.Popen._edgebox_tier_guard = True  # type: ignore[attr-defined]


def _check(item: pytest.Item) -> None:
    spawned, _current["spawned"] = _current["spawned"], []
    if spawned and item.config.stash.get(_GUARDED, False):
        first = spawned[0] if isinstance(spawned[0], str) else " ".join(spawned[0][:6])
        pytest.fail(
            f"{item.nodeid} is in the fast tier but started {len(spawned)} process(es), first "
            f"`{first}`. Mark it `@pytest.mark.system` (tests/tiers.py explains the tiers).",
            pytrace=False,
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    _current["item"], _current["spawned"] = item, []
    result = yield
    _check(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    result = yield
    _check(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    try:
        result = yield
        _check(item)
        return result
    finally:
        _current["item"] = None
