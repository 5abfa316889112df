"""Bounds on structured-output constraints before they reach native code.

llama.cpp parses a GBNF grammar recursively (one C stack frame chain per nested group) and
expands its rules recursively when the sampler is built; a grammar nested ~20,000 deep
overflows the C stack and kills the process. So grammars, and the JSON schemas that are
turned into grammars, are measured here first with cheap linear scans and refused past
limits set far below what native code survives (see `MAX_GBNF_DEPTH`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Measured with llama.cpp's parser on x86-64 with an 8 MiB stack (main thread and worker
# threads alike): ~19,000 nested groups, or a chain of 20,000-100,000 rules each naming the
# next, overflow the C stack. These limits leave a margin of over 100x (groups) and 19x
# (rules) and still fit any real grammar or response schema.
MAX_GBNF_CHARS = 64 * 1024
MAX_GBNF_DEPTH = 64  # nested ( ) groups
MAX_GBNF_RULES = 1024  # `name ::=` definitions
MAX_GBNF_REPEAT = 1000  # n in x{n} / x{m,n}; llama.cpp itself stops at 2000
MAX_SCHEMA_CHARS = 64 * 1024  # the schema as compact JSON
MAX_SCHEMA_DEPTH = 32  # nested objects and arrays in the schema document
MAX_SCHEMA_NODES = 4096  # keys and array items in the schema document, all levels

# What llama.cpp's grammar parser reads as one symbol whose inside is not syntax: string
# literals, character classes, comments (to CR or LF) and <token> references. Stripping them
# leaves only syntax; anything the parser would reject anyway may be over-counted, never
# under-counted, so a grammar cannot hide nesting from this scan.
_OPAQUE = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\r\n]*|<[^>]*>', re.DOTALL)
_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def gbnf_problem(grammar: str) -> str | None:
    """Why this grammar is refused (a message naming the limit), or None if within bounds."""
    if len(grammar) > MAX_GBNF_CHARS:
        return f"the grammar is {len(grammar)} characters; at most {MAX_GBNF_CHARS} are allowed"
    syntax = _OPAQUE.sub(" ", grammar)
    depth = deepest = 0
    for char in re.findall(r"[()]", syntax):
        depth = depth + 1 if char == "(" else max(0, depth - 1)
        deepest = max(deepest, depth)
    if deepest > MAX_GBNF_DEPTH:
        return f"the grammar nests groups {deepest} deep; at most {MAX_GBNF_DEPTH} are allowed"
    rules = syntax.count("::=")
    if rules > MAX_GBNF_RULES:
        return f"the grammar defines {rules} rules; at most {MAX_GBNF_RULES} are allowed"
    for match in _REPEAT.finditer(syntax):
        counts = [int(g) for g in match.groups() if g]
        if max(counts) > MAX_GBNF_REPEAT:
            return (
                f"the grammar repeats a symbol {max(counts)} times; "
                f"at most {MAX_GBNF_REPEAT} are allowed"
            )
    return None


def schema_problem(schema: Mapping[str, Any], compact_json: str) -> str | None:
    """Why this JSON schema is refused, or None; `compact_json` is its serialisation."""
    if len(compact_json) > MAX_SCHEMA_CHARS:
        return (
            f"the JSON schema is {len(compact_json)} characters; "
            f"at most {MAX_SCHEMA_CHARS} are allowed"
        )
    nodes, deepest = _measure(schema)
    if deepest > MAX_SCHEMA_DEPTH:
        return f"the JSON schema nests {deepest} levels deep; at most {MAX_SCHEMA_DEPTH} allowed"
    if nodes > MAX_SCHEMA_NODES:
        return f"the JSON schema has {nodes} keys and items; at most {MAX_SCHEMA_NODES} are allowed"
    refs = [r for r in _refs(schema) if not r.startswith("#")]
    if refs:
        return f"the JSON schema refers to an outside document ({refs[0][:80]}); use local $refs"
    return None


def _measure(value: Any) -> tuple[int, int]:
    """(keys and items, deepest nesting) of a JSON value, without recursion."""
    nodes = deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[Any] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        nodes += len(children)
        if deepest > MAX_SCHEMA_DEPTH or nodes > MAX_SCHEMA_NODES:
            break  # already refused; stop walking a hostile document
        stack.extend((child, depth + 1) for child in children)
    return nodes, deepest


def _refs(value: Any) -> list[str]:
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                out.append(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out
