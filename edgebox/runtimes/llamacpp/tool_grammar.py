"""GBNF that forces well-formed tool calls, and the triggers that start it lazily.

Each offered function becomes one call rule, `{"name": "<name>", "arguments": <schema>}`,
with the arguments compiled from the function's JSON schema by llama.cpp's converter (one
converter per function, its rules renamed `f<i>-…`, so `$defs` of different tools never
collide). The calls are wrapped in the model's format (`tool_format.ToolFormat`).

For tool_choice auto the grammar is lazy: llama.cpp leaves sampling free until the text
generated so far matches a trigger pattern (the whole text, so each pattern ends where a
call has just begun), then feeds the text from the pattern's first group to the grammar.
The grammar must accept every text a pattern can match, or llama.cpp aborts; so patterns
allow exactly the canonical start of a call, with the same whitespace the grammar allows.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from edgebox.runtimes.base import ToolSchemaError
from edgebox.runtimes.grammar_limits import schema_problem
from edgebox.runtimes.llamacpp.schema_gbnf import LiteralSafeConverter
from edgebox.runtimes.tool_format import ToolConstraint, ToolFormat, calls_text

WS_MAX = 20  # whitespace between the pieces of a call's markup, as llama.cpp's JSON grammar
_WS_RULE = f"[ \\t\\n\\r]{{0,{WS_MAX}}}"
_WS_RE = f"[ \\t\\n\\r]{{0,{WS_MAX}}}"
_OPAQUE = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]')
_NAME = re.compile(r"[A-Za-z0-9-]+")


def tool_call_gbnf(constraint: ToolConstraint) -> str:
    """The grammar of one or more calls (one when not parallel) in the constraint's format."""
    fmt = constraint.format
    rules = [
        "root ::= tc-ws tc-calls",
        f"tc-ws ::= {_WS_RULE}",
        f"tc-call ::= {_seq(fmt.call_open, 'tc-fn', fmt.call_close)}",
    ]
    parallel = constraint.parallel and fmt.parallel
    body = f"tc-call ( tc-ws {_seq(fmt.separator, 'tc-call')} )*" if parallel else "tc-call"
    rules.append(f"tc-calls ::= {_seq(fmt.list_open, body, fmt.list_close)}")
    alternatives = []
    for i, (name, schema_json) in enumerate(constraint.functions):
        prefix = f"f{i}-"
        args_rule, args_rules = _schema_rules(schema_json, prefix, i)
        rules.extend(args_rules)
        rules.append(f"{prefix}call ::= {_call_rule(fmt, name, args_rule)}")
        alternatives.append(f"{prefix}call")
    rules.append("tc-fn ::= " + " | ".join(alternatives))
    return "\n".join(rules) + "\n"


def _literal(text: str) -> str:
    return json.dumps(text)  # GBNF string literals escape as JSON strings do


def _seq(before: tuple[str, ...], middle: str, after: tuple[str, ...] = ()) -> str:
    """Literal pieces, then `middle`, then literal pieces, whitespace allowed between all."""
    parts = [_literal(p) for p in before] + [middle] + [_literal(p) for p in after]
    return " tc-ws ".join(parts)


def _call_rule(fmt: ToolFormat, name: str, args_rule: str) -> str:
    pieces = ["{", '"name"', ":", json.dumps(name), ",", json.dumps(fmt.args_key), ":"]
    return _seq(tuple(pieces), args_rule, ("}",))


def _schema_rules(schema_json: str, prefix: str, index: int) -> tuple[str, list[str]]:
    """(the arguments' rule name, every rule it needs), all names prefixed."""
    schema = json.loads(schema_json)
    problem = schema_problem(schema, schema_json)
    if problem:
        raise ToolSchemaError(problem, index)
    converter = LiteralSafeConverter()
    try:
        resolved = converter.resolve_refs(bounded_integers(schema), "args")
        converter.visit(resolved, "")
        text = converter.format_grammar()
    except Exception as exc:  # the converter raises bare errors on schemas it cannot map
        message = f"the parameters schema cannot be turned into a grammar: {exc}"
        raise ToolSchemaError(message, index) from exc
    lines = [line.split(" ::= ", 1) for line in text.splitlines() if " ::= " in line]
    names = {name for name, _ in lines}

    def rename(body: str) -> str:
        out, last = [], 0
        for match in _OPAQUE.finditer(body):
            out.append(
                _NAME.sub(
                    lambda m: _prefixed(m.group(0), names, prefix), body[last : match.start()]
                )
            )
            out.append(match.group(0))
            last = match.end()
        out.append(_NAME.sub(lambda m: _prefixed(m.group(0), names, prefix), body[last:]))
        return "".join(out)

    return prefix + "root", [f"{prefix}{name} ::= {rename(body)}" for name, body in lines]


MAX_INT_ENUM = 256


def bounded_integers(schema: Any) -> Any:
    """The schema with each integer of a small range (`minimum`..`maximum`) as an enum of its
    values: llama.cpp's converter ignores numeric bounds, an enum it enforces exactly."""
    if isinstance(schema, list):
        return [bounded_integers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: bounded_integers(value) for key, value in schema.items()}
    if out.get("type") == "integer" and "enum" not in out:
        low, high = _int_bound(out, "minimum", 1), _int_bound(out, "maximum", -1)
        if low is not None and high is not None and 0 <= high - low < MAX_INT_ENUM:
            rest = {k: v for k, v in out.items() if k not in _INT_KEYS}
            return {**rest, "enum": list(range(low, high + 1))}
    return out


_INT_KEYS = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _int_bound(schema: dict[str, Any], key: str, step: int) -> int | None:
    """The inclusive integer bound from `minimum`/`maximum` and their exclusive forms."""
    exclusive = "exclusiveM" + key[1:]
    bounds = []
    if isinstance(schema.get(key), int | float) and not isinstance(schema.get(key), bool):
        value = schema[key]
        bounds.append(math.ceil(value) if step > 0 else math.floor(value))
    if isinstance(schema.get(exclusive), int | float) and not isinstance(
        schema.get(exclusive), bool
    ):
        value = schema[exclusive]
        bounds.append(math.floor(value) + 1 if step > 0 else math.ceil(value) - 1)
    if not bounds:
        return None
    return max(bounds) if step > 0 else min(bounds)


def _prefixed(word: str, names: set[str], prefix: str) -> str:
    return prefix + word if word in names else word


def trigger_patterns(constraint: ToolConstraint) -> list[str]:
    """Regexes over the whole reply so far that say a call has just begun (lazy grammars):
    the marker, then any prefix of the canonical start of the first call."""
    fmt = constraint.format
    start = [*fmt.list_open, *fmt.call_open, "{", '"name"', ":", '"']  # the marker first
    lead = _WS_RE if fmt.anchored else r"[\s\S]*?"
    return [f"^{lead}({_marker_regex(fmt)}){_prefix_regex(start[len(fmt.marker) :])}$"]


def _marker_regex(fmt: ToolFormat) -> str:
    """The format's marker with the whitespace the grammar allows between its pieces."""
    return _WS_RE.join(re.escape(p) for p in fmt.marker)


def _prefix_regex(pieces: list[str]) -> str:
    """Any prefix of the pieces, whitespace allowed before each one."""
    out = ""
    for piece in reversed(pieces):
        inner = out
        for ch in reversed(piece):
            inner = f"(?:{re.escape(ch)}{inner})?"
        out = f"(?:{_WS_RE}{inner})?"
    return out


def call_heads(constraint: ToolConstraint) -> tuple[str, ...]:
    """Each offered function's first call up to what the model chooses, exactly as past calls
    render (`tool_format.calls_text`, whose spacing the grammar's optional whitespace allows):
    the opening (its tags too: `<tool_call>`, `[TOOL_CALLS][`), `{"name": "<name>", "<args
    key>":`, and where the arguments' schema forces it, the first key (`first_key`)."""
    fmt = constraint.format
    heads = []
    for name, schema_json in constraint.functions:
        text = calls_text(fmt, [{"name": name, "arguments": "{}"}])
        heads.append(_with_key(text[: _args_end(fmt, text, name)], schema_json))
    return tuple(heads)


def later_heads(constraint: ToolConstraint) -> tuple[str, tuple[str, ...]] | None:
    """Where a reply may hold several calls: the text after a call's object that says another
    follows (its gate, whitespace left out: `,`, or `</tool_call><tool_call>`), and each
    function's head after that gate as a second call renders (` {"name": …`, `\n{"name": …`).
    None where the reply holds one call."""
    fmt = constraint.format
    if not (constraint.parallel and fmt.parallel):
        return None
    gate = "".join((*fmt.call_close, *fmt.separator, *fmt.call_open))
    gate = "".join(gate.split())
    first = {"name": "f", "arguments": "{}"}
    first_text = calls_text(fmt, [first])
    object_end = first_text.index("}}") + 2  # the first call's object, as both render it
    heads = []
    for name, schema_json in constraint.functions:
        text = calls_text(fmt, [first, {"name": name, "arguments": "{}"}])
        between = text[object_end : _args_end(fmt, text, name, object_end)]
        heads.append(_with_key(_after_typed(between, len(gate)), schema_json))
    return gate, tuple(heads)


def call_tail(constraint: ToolConstraint) -> str:
    """The text after a call's arguments that every reply writes, as past calls render: the
    call's closing brace and, in a reply of one call, everything to its end (`}]}`,
    `}\n</tool_call>`); where another call may follow, what that one and the end share."""
    fmt = constraint.format
    call = {"name": "f", "arguments": "{}"}
    one = calls_text(fmt, [call])
    after_args = one.index("{}") + 2
    tail = one[after_args:]
    if constraint.parallel and fmt.parallel:
        two = calls_text(fmt, [call, call])[after_args:]
        shared = (i for i, (a, b) in enumerate(zip(tail, two, strict=False)) if a != b)
        tail = tail[: next(shared, min(len(tail), len(two)))]
    return tail


def _args_end(fmt: ToolFormat, text: str, name: str, start: int = 0) -> int:
    """Where the arguments begin in a rendered call of `name` at or after `start`."""
    after_name = text.index(json.dumps(name), start) + len(json.dumps(name))
    key = json.dumps(fmt.args_key) + ": "
    return text.index(key, after_name) + len(key)


def _with_key(head: str, schema_json: str) -> str:
    """A head through the arguments' first key where their schema forces one (`first_key`)."""
    key = first_key(schema_json)
    return head + "{" + json.dumps(key) + ":" if key else head.rstrip()


_KEY = re.compile(r"[A-Za-z0-9_-]+")
_NOT_AN_OBJECT_RULE = ("$ref", "oneOf", "anyOf", "allOf", "const", "enum", "not", "if")


def first_key(schema_json: str) -> str | None:
    """The key the arguments' grammar must open with: llama.cpp's converter writes an
    object's required properties first, in the order of `properties`, so with any required
    one the first is forced right after `{`. None where the schema is not a plain object with
    a required property, or the key is not a plain name."""
    try:
        schema = json.loads(schema_json)
    except ValueError:
        return None
    if not isinstance(schema, dict) or any(k in schema for k in _NOT_AN_OBJECT_RULE):
        return None
    properties, required = schema.get("properties"), schema.get("required")
    if schema.get("type", "object") != "object" or not isinstance(properties, dict):
        return None
    if not isinstance(required, list):
        return None
    key = next((k for k in properties if k in required), None)
    return key if isinstance(key, str) and _KEY.fullmatch(key) else None


_WORD_END = re.compile(r"[A-Za-z0-9]+$")


def forced_after(
    constraint: ToolConstraint, heads: tuple[str, ...], reply: str, *, engaged: bool = False
) -> str | None:
    """The text the call grammar leaves no choice about after `reply` (the call's text so
    far: the reply, or where calls may follow text, the reply from the marker on; for a later
    call, the text after its gate), whitespace aside: the rest of the call's head common to
    every function still possible, spaced as `heads` (`call_heads`, `later_heads`). It ends at
    a word's end or before a space, where the model's next token would start anyway, so the
    text tokenizes as it will in the next turn's prompt. Empty when nothing is forced yet (a
    lazy grammar before its marker, or the model's choice of name); None once `reply` is past
    the heads or off them (not a call, or the call's head written), or where it spells a lazy
    grammar's marker in a way its trigger does not take (the grammar never engages).
    `engaged`: the grammar is past its trigger (a later call's head)."""
    fmt = constraint.format
    typed = "".join(reply.split())
    live = [h for h in heads if "".join(h.split()).startswith(typed)]
    if not live:
        return None
    if constraint.lazy and not engaged:
        if len(reply) - len(reply.lstrip()) > WS_MAX:
            return None  # past the whitespace its trigger allows before a call
        if len(typed) < sum(len(p) for p in fmt.marker):
            return ""  # the model has not begun a call (its trigger has not fired)
        if not engages(constraint, reply):
            return None  # the marker, but not as the trigger takes it: the grammar waits
    rests = [_after_typed(head, len(typed)) for head in live]
    if reply[-1:].isspace():
        rests = [rest.lstrip() for rest in rests]
    if all(not rest for rest in rests):
        return None
    if reply[-1:].isalnum() and rests[0][:1].isalnum():
        return ""  # mid-word: the model's next token ends the word as the tokenizer would
    forced = rests[0]
    for rest in rests[1:]:
        n = 0
        while n < min(len(forced), len(rest)) and forced[n] == rest[n]:
            n += 1
        forced = forced[:n]
    if any(rest != forced for rest in rests):  # the model names the function from here
        word = _WORD_END.search(forced)
        forced = forced[: word.start()] if word else forced
    return forced


def engages(constraint: ToolConstraint, reply: str) -> bool:
    """Whether a lazy grammar's trigger takes `reply` (from where a call may begin) as the
    start of a call: its marker, with no more whitespace before and inside it than a call
    allows."""
    return re.match(_WS_RE + _marker_regex(constraint.format), reply) is not None


def head_written(heads: tuple[str, ...], reply: str) -> bool:
    """Whether `reply` holds one of `heads` whole (whitespace aside)."""
    typed = "".join(reply.split())
    return any(typed.startswith("".join(h.split())) for h in heads)


def _after_typed(head: str, typed: int) -> str:
    """`head` after its first `typed` non-whitespace characters."""
    for i, ch in enumerate(head):
        if typed == 0:
            return head[i:]
        if not ch.isspace():
            typed -= 1
    return ""


def ends_when_complete(constraint: ToolConstraint) -> bool:
    """Whether the call grammar, once complete, allows nothing but the end of the reply: an
    eager grammar (a lazy one allows anything before its trigger) whose calls close a list, or
    which holds one call. The reply then ends with its last call, with no step to sample the
    end-of-generation token."""
    fmt = constraint.format
    return not constraint.lazy and (
        bool(fmt.list_close) or not (constraint.parallel and fmt.parallel)
    )
