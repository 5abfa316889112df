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

# What llama.cpp's grammar parser reads as text, not syntax: string literals, character
# classes and comments (to CR or LF).
GBNF_LITERALS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\r\n]*', re.DOTALL)
# ... and <token> references: each one symbol whose inside is not syntax. Stripping them
# leaves only syntax; anything the parser would reject anyway may be over-counted, never
# under-counted, so a grammar cannot hide nesting from this scan.
_OPAQUE = re.compile(GBNF_LITERALS.pattern + r"|<[^>]*>", re.DOTALL)
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
    return _repeat_problem(schema)


# Keywords llama.cpp's schema converter expands by writing the item out n times (a
# `minLength` of 10**9 built a string of 10**9 rule names: gigabytes, before any grammar
# limit could be checked).
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")
_PATTERN_TOKEN = re.compile(
    r"\\.|\[(?:\\.|[^\]\\])*\]|[()]|\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}|.", re.DOTALL
)


def _repeat_problem(schema: Any) -> str | None:
    """Why a count or a pattern's `{n}` would make the converter write too much, or None."""
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key in _COUNTS:
            value = item.get(key)
            if isinstance(value, int | float) and value > MAX_GBNF_REPEAT:
                return f"the JSON schema's {key} is {value}; at most {MAX_GBNF_REPEAT} allowed"
        pattern = item.get("pattern")
        if isinstance(pattern, str) and _pattern_copies(pattern) > MAX_GBNF_REPEAT:
            return (
                f"the JSON schema's pattern repeats a piece over {MAX_GBNF_REPEAT} times "
                "(counting nested {n})"
            )
        stack.extend(item.values())
    return None


ANY_VALUE = {"type": ["string", "number", "boolean", "object", "array", "null"]}
_ANNOTATIONS = {"description", "title", "examples", "default", "$comment", "deprecated"}
# llama.cpp's converter writes a cap of n (`maxLength`, `maxItems`, a pattern's `{0,n}`) as n
# nested optional groups, so a cap past this depth budget cannot become a grammar at all.
MAX_GRAMMAR_CAP = 48


def grammar_schema(schema: Any) -> Any:
    """The schema a grammar is built from, as agents' tool schemas need it:

    - every `maxLength`/`maxItems` over `MAX_GRAMMAR_CAP`, and every `pattern` with a larger
      `{m,n}`, is left out: the grammar is looser (max_tokens still bounds the reply) rather
      than refused, and agents send such caps on every request (Claude Code: `maxLength: 256`
      on names, 524288 on file contents). Minimums stay: `schema_problem` still judges them;
    - a schema of annotations only (`{"description": ...}`: any value) is spelled out as any
      JSON value, which llama.cpp's converter does not take unspelled."""
    if isinstance(schema, list):
        return [grammar_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema and all(k in _ANNOTATIONS and not isinstance(v, dict) for k, v in schema.items()):
        return {**schema, **ANY_VALUE}
    return {
        key: grammar_schema(value) for key, value in schema.items() if not _too_big_cap(key, value)
    }


def _too_big_cap(key: str, value: Any) -> bool:
    if key in ("maxLength", "maxItems"):
        return isinstance(value, int | float) and value > MAX_GRAMMAR_CAP
    return key == "pattern" and isinstance(value, str) and _pattern_copies(value) > MAX_GRAMMAR_CAP


def _pattern_copies(pattern: str) -> int:
    """The most copies of one piece a pattern's `{m,n}` quantifiers ask for, multiplied
    through nested groups (`(a{100}){100}` is 10,000), as the converter writes them out."""
    groups = [1]  # the largest expansion inside each open group
    last = 1  # the expansion of the atom just read
    for match in _PATTERN_TOKEN.finditer(pattern):
        token = match.group(0)
        if token == "(":
            groups.append(1)
            last = 1
        elif token == ")":
            last = groups.pop() if len(groups) > 1 else 1
            groups[-1] = max(groups[-1], last)
        elif match.group(1) is not None:
            counts = [g for g in match.groups() if g]
            last *= max(int(c) if len(c) <= 6 else 10**7 for c in counts)
            groups[-1] = max(groups[-1], last)
            if last > MAX_GBNF_REPEAT:
                return last
        else:
            last = 1
    return max(groups)


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
