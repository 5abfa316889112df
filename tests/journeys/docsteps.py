"""The docs' journey steps, read from the Markdown itself, so the docs and the tests are one text.

A step is a fenced block preceded by a marker comment, which readers never see:

    <!-- journey: hub-serve background="Server listening" -->
    ```console
    hub# edgebox hub serve --relay --url https://<HUB>:8443
    ...
    ```

In a ``console`` block a line `MACHINE# CMD` (as root) or `MACHINE$ CMD` (as the unprivileged
user) is a command; a trailing `\\` continues it on the next line. The lines after a command, up
to the next one, are what it prints, abbreviated: a line `...` skips any lines, `...` inside a
line matches any text, and `<NAME>` matches one word and remembers it (a later `<NAME>` in a
command is replaced by it; one that must match again has to be equal). The other lines must
appear in that order in the command's output (stdout and stderr together, trailing spaces
ignored). A ``bash`` or ``python`` block with a marker runs as one script on the machine its
`on=MACHINE` names (`as=user` for the unprivileged user, root otherwise).

Marker options: `background="TEXT"` (the command keeps running, as in a second terminal; the
step waits until its output contains TEXT), `on=`, `as=`, `expect="TEXT"` (a script's output
must contain TEXT).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

MARKER = re.compile(r"^<!--\s*journey:\s*(?P<body>.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_-]*)\s*$")
PROMPT = re.compile(r"^(?P<machine>[a-z][a-z0-9-]*)(?P<prompt>[#$]) (?P<cmd>.*)$")
PLACEHOLDER = re.compile(r"<(?P<name>[A-Z][A-Z0-9_-]*)>")


class DocError(ValueError):
    """A journey marker or block the extractor cannot read; names the file and line."""


@dataclass
class Command:
    machine: str
    root: bool
    text: str  # the command as the docs show it, placeholders included
    expected: list[str] = field(default_factory=list)  # the output lines shown under it

    def placeholders(self) -> list[str]:
        return PLACEHOLDER.findall(self.text)


@dataclass
class Step:
    id: str
    source: str  # "docs/quickstart.md:123"
    lang: str
    options: dict[str, str]
    commands: list[Command] = field(default_factory=list)
    script: str = ""  # bash/python blocks

    @property
    def background(self) -> str | None:
        return self.options.get("background")


def parse(path: Path, root: Path) -> list[Step]:
    """Every marked block of one Markdown file, in document order."""
    lines = path.read_text().splitlines()
    rel = path.relative_to(root)
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        if not marker:
            i += 1
            continue
        where = f"{rel}:{i + 1}"
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if not fence:
            raise DocError(f"{where}: a journey marker must be followed by a fenced block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise DocError(f"{where}: the block after the marker is not closed")
        words = shlex.split(marker["body"])
        options = dict(w.split("=", 1) if "=" in w else (w, "") for w in words[1:])
        step = Step(words[0], where, fence["lang"], options)
        body = lines[i + 2 : end]
        if step.lang == "console":
            step.commands = _commands(body, where)
        elif step.lang in ("bash", "python"):
            if "on" not in options:
                raise DocError(f"{where}: a {step.lang} step needs on=MACHINE")
            step.script = "\n".join(body) + "\n"
        else:
            raise DocError(
                f"{where}: journey blocks are console, bash or python, not {fence['lang']!r}"
            )
        steps.append(step)
        i = end + 1
    return steps


def _commands(body: list[str], where: str) -> list[Command]:
    commands: list[Command] = []
    continued = False
    for line in body:
        if continued:
            commands[-1].text = commands[-1].text[:-1] + line.strip()
            continued = line.endswith("\\")
            continue
        prompt = PROMPT.match(line)
        if prompt:
            commands.append(Command(prompt["machine"], prompt["prompt"] == "#", prompt["cmd"]))
            continued = line.endswith("\\")
        elif not commands:
            raise DocError(
                f"{where}: a console block must start with a MACHINE# or MACHINE$ prompt"
            )
        else:
            commands[-1].expected.append(line.rstrip())
    return commands


def collect(root: Path, files: list[str]) -> dict[str, Step]:
    """The steps of several files by id; ids must be unique across them."""
    steps: dict[str, Step] = {}
    for name in files:
        for step in parse(root / name, root):
            if step.id in steps:
                raise DocError(
                    f"{step.source}: step id {step.id!r} is also at {steps[step.id].source}"
                )
            steps[step.id] = step
    return steps


def substitute(text: str, bound: dict[str, str]) -> str:
    """The command with every <NAME> replaced; a name nothing bound yet is an error."""

    def value(m: re.Match[str]) -> str:
        if m["name"] not in bound:
            raise KeyError(f"<{m['name']}> is used before any step printed or set it")
        return bound[m["name"]]

    return PLACEHOLDER.sub(value, text)


def _line_pattern(line: str, bound: dict[str, str]) -> re.Pattern[str]:
    parts: list[str] = []
    for piece in re.split(r"(\.\.\.|<[A-Z][A-Z0-9_-]*>)", line):
        if piece == "...":
            parts.append(".*?")
        elif PLACEHOLDER.fullmatch(piece):
            name = piece[1:-1]
            if name in bound:
                parts.append(re.escape(bound[name]))
            else:
                parts.append(f"(?P<{name.replace('-', '_')}>\\S+)")
        else:
            parts.append(re.escape(piece))
    return re.compile("^\\s*" + "".join(parts) + "\\s*$")


def match_output(expected: list[str], output: str, bound: dict[str, str]) -> dict[str, str]:
    """Check the shown lines against real output, in order; returns the newly bound names.

    Raises AssertionError naming the first shown line that the output does not have."""
    actual = [line.rstrip() for line in output.splitlines()]
    found: dict[str, str] = {}
    pos = 0
    for shown in expected:
        if shown.strip() in ("...", ""):
            continue
        pattern = _line_pattern(shown, {**bound, **found})
        for j in range(pos, len(actual)):
            m = pattern.match(actual[j])
            if m:
                names = {k: v for k, v in m.groupdict().items() if v is not None}
                found.update({_original(k, shown): v for k, v in names.items()})
                pos = j + 1
                break
        else:
            raise AssertionError(
                f"the docs show the line\n    {shown}\nbut the output (after line {pos}) has "
                f"no such line:\n{output[-4000:]}"
            )
    return found


def _original(group: str, line: str) -> str:
    for name in PLACEHOLDER.findall(line):
        if name.replace("-", "_") == group:
            return name
    return group
