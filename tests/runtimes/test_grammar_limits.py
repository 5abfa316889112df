"""Schemas whose sizes llama.cpp's converter writes out item by item are refused before
conversion: a `minLength` of 10**9 once took a node to 10 GB of memory and a 503."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from edgebox.runtimes.grammar_limits import MAX_GBNF_REPEAT, grammar_schema, schema_problem
from edgebox.runtimes.llamacpp.tool_grammar import tool_call_gbnf
from edgebox.runtimes.tool_format import GENERIC, ToolConstraint


def _string(**extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"a": {"type": "string", **extra}}}


BOMBS = {
    "minLength": _string(minLength=10**9),
    "maxLength": _string(maxLength=10**9),
    "minItems": {"type": "array", "minItems": 10**9},
    "maxItems": {"type": "object", "properties": {"l": {"type": "array", "maxItems": 10**7}}},
    "nested pattern": _string(pattern="^((a{1000}){1000}){1000}$"),
    "long count": _string(pattern="^a{" + "9" * 5000 + "}$"),
    "in anyOf": {"anyOf": [{"type": "string", "minLength": 5000}]},
}


@pytest.mark.parametrize("schema", BOMBS.values(), ids=BOMBS.keys())
def test_repetition_bombs_are_refused_before_conversion(schema: dict[str, Any]) -> None:
    start = time.monotonic()
    problem = schema_problem(schema, json.dumps(schema))
    assert problem is not None and str(MAX_GBNF_REPEAT) in problem
    assert time.monotonic() - start < 1


FINE = [
    _string(pattern=r"^\d{3}-\d{4}$"),
    _string(pattern="^[a-z]{2,64}@[a-z]{2,64}\\.[a-z]{2,8}$"),
    _string(minLength=1, maxLength=40),
    {"type": "array", "minItems": 1, "maxItems": 10},
]


@pytest.mark.parametrize("schema", FINE)
def test_real_schemas_still_pass_and_compile(schema: dict[str, Any]) -> None:
    compact = json.dumps(schema, separators=(",", ":"))
    assert schema_problem(schema, compact) is None
    constraint = ToolConstraint(GENERIC, (("f", compact),), lazy=False, parallel=False)
    assert "f0-root" in tool_call_gbnf(constraint)


def test_agent_schemas_become_grammars_huge_caps_left_out() -> None:
    # Claude Code's Write tool: a file's content capped at 512 KiB characters
    schema = {
        "type": "object",
        "properties": {
            "content": {"type": "string", "maxLength": 524288},
            "lines": {"type": "array", "items": {"type": "string"}, "maxItems": 10**9},
            "name": {"type": "string", "minLength": 1, "maxLength": 40},
            "agent": {"type": "string", "maxLength": 256},  # 256 nested groups in the grammar
            "line": {"type": "string", "pattern": "^[\\s\\S]{0,300}$"},
            "args": {"description": "any JSON value"},  # Claude Code's Workflow tool
            "description": {"type": "string"},  # a property that is named like an annotation
        },
    }
    relaxed = grammar_schema(schema)
    assert "maxLength" not in relaxed["properties"]["content"]
    assert "maxItems" not in relaxed["properties"]["lines"]
    assert relaxed["properties"]["name"] == {"type": "string", "minLength": 1, "maxLength": 40}
    assert relaxed["properties"]["agent"] == {"type": "string"}
    assert relaxed["properties"]["line"] == {"type": "string"}
    assert "null" in relaxed["properties"]["args"]["type"]
    assert relaxed["properties"]["description"] == {"type": "string"}
    assert schema_problem(relaxed, json.dumps(relaxed)) is None
    tool_call_gbnf(
        ToolConstraint(GENERIC, (("write", json.dumps(relaxed)),), lazy=False, parallel=False)
    )
    huge_minimum = {"type": "string", "minLength": 10**9}
    assert grammar_schema(huge_minimum) == huge_minimum  # still refused by schema_problem
