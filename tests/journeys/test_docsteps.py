"""The doc-step extractor and output matcher (no root, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.journeys.conftest import DOCS
from tests.journeys.docsteps import (
    FENCE,
    MARKER,
    PLACEHOLDER,
    DocError,
    collect,
    match_output,
    parse,
    substitute,
)
from tests.journeys.world import REPO

DOC = """# t

<!-- journey: make-token -->
```console
hub# edgebox token create \\
  --name box1
# token tok_..., single use
edgebox join <TOKEN>
```

<!-- journey: use on=box1 as=user expect="ok" -->
```python
print("ok")
```

```console
box1# not a step (no marker)
```
"""


def test_steps_commands_and_shown_output(tmp_path: Path) -> None:
    (tmp_path / "d.md").write_text(DOC)
    make, use = parse(tmp_path / "d.md", tmp_path)
    assert (make.id, make.source) == ("make-token", "d.md:3")
    [command] = make.commands
    assert (command.machine, command.root) == ("hub", True)
    assert command.text == "edgebox token create --name box1"
    assert command.expected == ["# token tok_..., single use", "edgebox join <TOKEN>"]
    assert (use.lang, use.options, use.script) == (
        "python",
        {"on": "box1", "as": "user", "expect": "ok"},
        'print("ok")\n',
    )


def test_shown_lines_bind_and_must_appear_in_order() -> None:
    output = "noise\n# token tok_12, single use\nedgebox join ebx1_abc.def  \n"
    shown = ["# token tok_..., single use", "edgebox join <TOKEN>"]
    assert match_output(shown, output, {}) == {"TOKEN": "ebx1_abc.def"}
    assert (
        substitute("edgebox join <TOKEN>", {"TOKEN": "ebx1_abc.def"}) == "edgebox join ebx1_abc.def"
    )
    with pytest.raises(AssertionError, match="single use"):
        match_output(shown[::-1], output, {})  # out of order: the first line missing after
    with pytest.raises(AssertionError):
        match_output(["edgebox join <TOKEN>"], output, {"TOKEN": "another"})  # bound: must equal
    with pytest.raises(KeyError, match="<LOGIN>"):
        substitute("edgebox login <LOGIN>", {})


def test_a_marker_without_a_block_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d.md").write_text("<!-- journey: lost -->\ntext\n")
    with pytest.raises(DocError, match=r"d\.md:1"):
        parse(tmp_path / "d.md", tmp_path)


def test_the_docs_parse_and_every_placeholder_is_given_or_printed_first() -> None:
    steps = collect(REPO, DOCS)
    known = {"HUB", "BOX1-LAN", "BOX2-LAN"}  # what the suite fills in (world.py's addresses)
    for step in steps.values():
        for command in step.commands:
            unknown = set(command.placeholders()) - known
            assert not unknown, f"{step.source}: {sorted(unknown)} used before a step prints it"
            for line in command.expected:
                known |= {n for n in PLACEHOLDER.findall(line)}


def test_every_quickstart_block_is_a_journey_step() -> None:
    """A console block without a marker would be a documented command no test runs."""
    lines = (REPO / "docs" / "quickstart.md").read_text().splitlines()
    unmarked = [
        f"docs/quickstart.md:{i + 1}"
        for i, line in enumerate(lines)
        if (fence := FENCE.match(line))
        and fence["lang"] in ("console", "python", "bash")
        and not (i > 0 and MARKER.match(lines[i - 1]))
    ]
    assert not unmarked, f"blocks with commands but no journey marker: {unmarked}"
