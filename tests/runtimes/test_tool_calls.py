"""Tool-call formats: detection from templates, the streaming parser, and the grammars
llama.cpp builds from them (checked token by token against SmolLM2's real vocabulary)."""

from __future__ import annotations

import ctypes
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from edgebox.runtimes.base import SamplingParams, ToolSchemaError
from edgebox.runtimes.chat_template import ChatTemplate
from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.sampling import Sampler, build_sampler
from edgebox.runtimes.llamacpp.tool_grammar import (
    call_heads,
    first_key,
    forced_after,
    tool_call_gbnf,
    trigger_patterns,
)
from edgebox.runtimes.tool_format import (
    FORMATS,
    GENERIC,
    HERMES,
    LLAMA3,
    MISTRAL,
    ToolConstraint,
    ToolFormat,
    calls_text,
    detect_format,
    native_messages,
    template_tools,
)
from edgebox.runtimes.tool_parse import ArgsDelta, CallStart, ContentDelta, ToolCallParser

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["c", "f"]},
    },
    "required": ["city", "days"],
}
FUNCTIONS = (("get_weather", json.dumps(WEATHER)), ("noop", '{"type":"object","properties":{}}'))
CALLS = [
    {
        "id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Paris \\"centre\\"", "days": 3}',
    },
    {"id": "call_2", "name": "noop", "arguments": "{}"},
]


def assemble(parser: ToolCallParser, pieces: list[str]) -> tuple[str, list[dict[str, str]]]:
    """Content and calls as a client assembles them from the deltas."""
    content, calls = "", []
    deltas = [d for piece in pieces for d in parser.feed(piece)] + parser.finish()
    for d in deltas:
        if isinstance(d, ContentDelta):
            content += d.text
        elif isinstance(d, CallStart):
            assert d.index == len(calls)
            calls.append({"name": d.name, "arguments": ""})
        elif isinstance(d, ArgsDelta):
            calls[d.index]["arguments"] += d.text
    return content, calls


DEEP = "[" * 5000 + "]" * 5000  # past Python's recursion limit for json


@pytest.mark.parametrize("fmt", [HERMES, MISTRAL, GENERIC], ids=lambda f: f.name)
def test_arguments_nested_past_the_recursion_limit_pass_through_as_text(fmt: ToolFormat) -> None:
    written = calls_text(fmt, [{"id": "c", "name": "f", "arguments": DEEP}])
    assert DEEP in written  # a past call's arguments that cannot be parsed stay as sent
    reply = calls_text(fmt, [{"id": "c", "name": "f", "arguments": "{}"}]).replace("{}", DEEP)
    assert assemble(ToolCallParser(fmt), [reply]) == ("", [{"name": "f", "arguments": DEEP}])


@pytest.mark.parametrize("fmt", [HERMES, MISTRAL, GENERIC], ids=lambda f: f.name)
def test_a_reply_splits_into_content_and_calls_however_it_is_cut(fmt: ToolFormat) -> None:
    lead = "" if fmt.anchored else "Let me look that up.\n"
    reply = lead + calls_text(fmt, CALLS)
    expected = [{"name": c["name"], "arguments": c["arguments"]} for c in CALLS]
    whole = assemble(ToolCallParser(fmt), [reply])
    by_char = assemble(ToolCallParser(fmt), list(reply))
    by_three = assemble(ToolCallParser(fmt), [reply[i : i + 3] for i in range(0, len(reply), 3)])
    assert whole == by_char == by_three == (lead, expected)


def test_llama3_reads_its_parameters_key() -> None:
    reply = calls_text(LLAMA3, CALLS[:1])
    assert '"parameters"' in reply
    assert assemble(ToolCallParser(LLAMA3), list(reply)) == (
        "",
        [{"name": "get_weather", "arguments": CALLS[0]["arguments"]}],
    )


def test_text_that_only_looks_like_a_marker_is_content() -> None:
    assert assemble(ToolCallParser(HERMES), ["a <tool", "_c"]) == ("a <tool_c", [])
    assert assemble(ToolCallParser(HERMES), ["1 < 2 and <b>"]) == ("1 < 2 and <b>", [])
    reply = '{"answer": 42}'  # JSON, but not the envelope: plain content
    assert assemble(ToolCallParser(GENERIC), list(reply)) == (reply, [])
    assert assemble(ToolCallParser(GENERIC), ["  Hello"]) == ("  Hello", [])


def test_partial_markup_is_held_back_until_it_is_decided() -> None:
    parser = ToolCallParser(HERMES)
    assert parser.feed("Hi <tool_") == [ContentDelta("Hi ")]
    assert parser.feed("call>") == []


def test_calls_in_another_key_order_are_read_when_they_close() -> None:
    reply = (
        '<tool_call>{"arguments": {"days": 2, "city": "Oslo"}, "name": "get_weather"}</tool_call>'
    )
    content, calls = assemble(ToolCallParser(HERMES), list(reply))
    assert content == ""
    assert calls == [{"name": "get_weather", "arguments": '{"days": 2, "city": "Oslo"}'}]


def test_a_call_cut_off_before_its_name_comes_back_as_text() -> None:
    assert assemble(ToolCallParser(HERMES), ["ok <tool_call>\n{"]) == ("ok <tool_call>\n{", [])
    # cut off inside the arguments: the call and what it had so far
    content, calls = assemble(ToolCallParser(HERMES), ['<tool_call>{"name": "f", "arguments": {"a'])
    assert (content, calls) == ("", [{"name": "f", "arguments": '{"a'}])


def test_formats_are_detected_from_the_template_text() -> None:
    assert detect_format(None) is GENERIC
    assert (
        detect_format("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}") is GENERIC
    )
    hermes = "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}<tool_call>"
    assert detect_format(hermes) is HERMES
    assert detect_format("[AVAILABLE_TOOLS]{{ tools }}[TOOL_CALLS]") is MISTRAL
    llama = '<|start_header_id|>{% if tools %}{"name": fn, "parameters": {}}{% endif %}'
    assert detect_format(llama) is LLAMA3


def test_a_tool_aware_template_gets_tools_and_past_calls_in_its_own_context() -> None:
    source = (
        "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>"
        "{% endif %}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
        "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }} "
        "{{ c.function.arguments | tojson }}</tool_call>{% endfor %}{% endfor %}<|assistant|>"
    )
    template = ChatTemplate(source, name="gguf", bos_token="", eos_token="")
    messages = native_messages(
        [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": CALLS[:1]},
            {"role": "tool", "content": "21C", "tool_call_id": "call_1"},
        ]
    )
    tools = template_tools([{"name": "get_weather", "parameters": WEATHER}])
    text = template.render(messages, tools=tools)
    assert text.startswith("<tools>get_weather;</tools>")
    assert '<tool_call>get_weather {"city": "Paris \\"centre\\"", "days": 3}</tool_call>' in text
    assert "<|tool|>21C" in text


# --- grammars, on a real vocabulary ---


@pytest.fixture(scope="module")
def vocab_model(smollm2_path: Path) -> Iterator[LlamaCppModel]:
    model = LlamaCppModel(smollm2_path, vocab_only=True)
    yield model
    model.close()


def _allowed(sampler: Sampler, token: int) -> bool:
    """Whether the grammar lets `token` through (applied alone, never a bad accept)."""
    assert sampler.grammar is not None
    data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
    array = llama_cpp.llama_token_data_array(data, 1, -1, False)
    llama_cpp.llama_sampler_apply(sampler.grammar, ctypes.byref(array))
    return bool(data[0].logit > -1e30)


def _walk(model: LlamaCppModel, sampler: Sampler, text: str) -> bool:
    """Feed `text` token by token; False at the first token the grammar refuses."""
    for token in model.tokenize(text, add_special=False):
        if not _allowed(sampler, token):
            return False
        sampler.accept(token)
    return True


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_eager_grammars_take_well_formed_calls_and_nothing_else(
    vocab_model: LlamaCppModel, name: str
) -> None:
    fmt = FORMATS[name]
    constraint = ToolConstraint(fmt, FUNCTIONS, lazy=False, parallel=True)
    calls = CALLS if fmt.parallel else CALLS[:1]
    sampler = build_sampler(vocab_model, SamplingParams(temperature=0, tools=constraint))
    try:
        assert _walk(vocab_model, sampler, calls_text(fmt, calls))
        hello = vocab_model.tokenize(" Hello", add_special=False)[0]
        assert not _allowed(sampler, hello)  # complete: only the end of the reply may follow
    finally:
        sampler.free()
    for wrong in ('{"city": "Paris"}', '{"city": "Paris", "days": 9}'):  # missing, out of range
        bad = calls_text(fmt, [{"name": "get_weather", "arguments": wrong}])
        sampler = build_sampler(vocab_model, SamplingParams(temperature=0, tools=constraint))
        try:
            assert not _walk(vocab_model, sampler, bad)
        finally:
            sampler.free()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_lazy_grammars_leave_text_free_and_engage_once_a_call_starts(
    vocab_model: LlamaCppModel, name: str
) -> None:
    fmt = FORMATS[name]
    constraint = ToolConstraint(fmt, FUNCTIONS, lazy=True, parallel=False)
    lead = "" if fmt.anchored else "Sure, one moment.\n"
    sampler = build_sampler(vocab_model, SamplingParams(temperature=0, tools=constraint))
    try:
        assert _walk(vocab_model, sampler, lead + calls_text(fmt, CALLS[:1]))
        hello = vocab_model.tokenize(" Hello", add_special=False)[0]
        assert not _allowed(sampler, hello)  # the grammar engaged, and the call is complete
    finally:
        sampler.free()
    sampler = build_sampler(vocab_model, SamplingParams(temperature=0, tools=constraint))
    try:  # plain text never triggers it
        assert _walk(vocab_model, sampler, "It is sunny in Paris {today}, <b>warm</b> [1].")
    finally:
        sampler.free()


def test_every_trigger_is_anchored_and_captures_the_marker() -> None:
    for fmt in FORMATS.values():
        (pattern,) = trigger_patterns(ToolConstraint(fmt, FUNCTIONS, lazy=True, parallel=True))
        assert pattern.startswith("^") and pattern.endswith("$") and pattern.count("(") > 0


def test_a_schema_the_grammar_cannot_take_names_its_function() -> None:
    bad = '{"type":"object","properties":{"a":{"type":"string","pattern":"(("}}}'
    with pytest.raises(ToolSchemaError) as caught:
        tool_call_gbnf(ToolConstraint(GENERIC, (*FUNCTIONS, ("f", bad)), lazy=False, parallel=True))
    assert caught.value.index == 2


ODD_VALUES = ['say "hi"', "back\\slash", 'both \\" end', "line\nbreak"]


@pytest.mark.parametrize("value", ODD_VALUES)
def test_enum_values_and_names_with_quotes_and_backslashes_are_forced_exactly(
    vocab_model: LlamaCppModel, value: str
) -> None:
    # llama-cpp-python's converter left backslashes unescaped: a parse failure for a valid
    # schema, or a grammar forcing a different string than the enum's.
    schema = {
        "type": "object",
        "properties": {value: {"enum": [value, "x"]}},
        "required": [value],
    }
    compact = json.dumps(schema, separators=(",", ":"))
    constraint = ToolConstraint(GENERIC, (("f", compact),), lazy=False, parallel=False)
    params = [
        SamplingParams(temperature=0, tools=constraint),
        SamplingParams(temperature=0, json_schema=schema),
    ]
    call = [{"name": "f", "arguments": json.dumps({value: value})}]
    texts = [calls_text(GENERIC, call), json.dumps({value: value})]
    for param, text in zip(params, texts, strict=True):
        for candidate, ok in ((text, True), (text.replace("\\", "\\\\", 1), False)):
            sampler = build_sampler(vocab_model, param)
            try:
                assert _walk(vocab_model, sampler, candidate) is ok, candidate
            finally:
                sampler.free()


def test_a_call_is_named_as_soon_as_its_name_is_written() -> None:
    """The first streamed event of a call (its id and name) goes out at the comma after the
    name, before the arguments' key is decoded: a few tokens sooner for the client."""
    parser = ToolCallParser(HERMES)
    assert parser.feed('<tool_call>{"name": "get_weather"') == []
    assert parser.feed(",") == [CallStart(0, "get_weather")]
    assert parser.feed(' "arguments": ') == []
    assert parser.feed('{"city": "Oslo"') == [ArgsDelta(0, '{"city": "Oslo"')]
    assert parser.feed("}}</tool_call>") == [ArgsDelta(0, "}")]


def test_another_key_between_the_name_and_the_arguments_is_read_at_the_close() -> None:
    reply = '<tool_call>{"name": "get_weather", "id": "x", "arguments": {"days": 2}}</tool_call>'
    for pieces in ([reply], list(reply)):
        assert assemble(ToolCallParser(HERMES), pieces) == (
            "",
            [{"name": "get_weather", "arguments": '{"days": 2}'}],
        )


@pytest.mark.parametrize("fmt", [GENERIC, LLAMA3, HERMES, MISTRAL], ids=lambda f: f.name)
def test_the_forced_header_is_how_past_calls_render(fmt: ToolFormat) -> None:
    """What the engine jumps over at the start of a forced call: with one function, its whole
    head exactly as the conversation renders it afterwards (so the next turn's prefix matches),
    its tags included, through the first required key of its arguments, up to the space the
    model's next token starts with; with several, the opening up to the name; nothing where
    the grammar waits for a trigger."""
    one = ToolConstraint(fmt, FUNCTIONS[:1], lazy=False, parallel=False)
    heads = call_heads(one)
    header = forced_after(one, heads, "")
    arguments = '{"city": "Oslo", "days": 2}'
    written = calls_text(fmt, [{"id": "c", "name": FUNCTIONS[0][0], "arguments": arguments}])
    # up to the first required key, which the arguments' grammar opens with
    assert header and written.startswith(header + ' "Oslo"')
    assert header.endswith(f'"{fmt.args_key}": {{"city":')
    lazy = ToolConstraint(fmt, FUNCTIONS[:1], lazy=True, parallel=False)
    assert forced_after(lazy, heads, "") == ""
    several = ToolConstraint(fmt, FUNCTIONS, lazy=False, parallel=False)
    opening = forced_after(several, call_heads(several), "")
    assert opening and written.startswith(opening) and opening.endswith('"name": "')


@pytest.mark.parametrize("lazy", [False, True], ids=["forced", "auto"])
@pytest.mark.parametrize("fmt", [GENERIC, LLAMA3], ids=lambda f: f.name)
def test_every_jump_is_the_text_the_call_renders_as(fmt: ToolFormat, lazy: bool) -> None:
    """Written out a character at a time, a call's reply is jumped over only where the
    grammar leaves no choice: what is forced is always the text that follows in the rendered
    call, never before a lazy grammar's marker, never part of a name another function shares,
    and nothing once the head (through a first required key) is written."""
    functions = (*FUNCTIONS, ("get_time", "{}"), ("get", "{}"))
    constraint = ToolConstraint(fmt, functions, lazy=lazy, parallel=False)
    heads = call_heads(constraint)
    for name in ("get_weather", "noop", "get"):
        arguments = '{"city": "Oslo", "days": 2}' if name == "get_weather" else "{}"
        written = calls_text(fmt, [{"id": "c", "name": name, "arguments": arguments}])
        head = heads[[f for f, _ in functions].index(name)]
        assert written.startswith(head)
        head_end = len(head)
        jumped = []
        for n in range(len(written) + 1):
            forced = forced_after(constraint, heads, written[:n])
            if n >= head_end:
                assert forced is None, (name, written[:n])
                continue
            assert forced is not None, (name, written[:n])
            assert written[n:].startswith(forced), (name, written[:n], forced)
            if forced:
                jumped.append((n, forced))
        if lazy:
            assert all(n >= len("".join(fmt.marker)) for n, _ in jumped)
        # the name is completed only once no other function shares what is typed of it
        opening = written.index('"name": "') + len('"name": "')
        for n, forced in jumped:
            typed = written[opening:n]
            if n > opening:
                rivals = [f for f, _ in functions if f.startswith(typed) and f != name]
                assert not rivals or not forced[0].isalnum(), (name, typed, forced)
    assert forced_after(constraint, heads, "Sure, here is") is None


@pytest.mark.parametrize("fmt", [GENERIC, LLAMA3], ids=lambda f: f.name)
def test_nothing_is_jumped_where_a_lazy_grammar_never_engaged(
    vocab_model: LlamaCppModel, fmt: ToolFormat
) -> None:
    """A reply that spells the marker but not as the trigger takes it (more whitespace inside
    it than a call allows, or a space inside a key) leaves the lazy grammar waiting: nothing
    constrains what follows, so nothing may be forced there either (the text written out
    would be the engine's, not the model's or the grammar's)."""
    from edgebox.runtimes.llamacpp.jump_forward import CallHeads, jump

    constraint = ToolConstraint(fmt, FUNCTIONS[:1], lazy=True, parallel=False)
    key = fmt.marker[1]
    for reply in ("{" + " " * 25 + key + ":", "{" + key[:3] + " " + key[3:] + ":"):
        heads = CallHeads.of(constraint)
        sampler = build_sampler(vocab_model, SamplingParams(temperature=0, tools=constraint))
        assert _walk(vocab_model, sampler, reply)
        heads.feed(reply.encode())
        tokens, sampler = jump(vocab_model, heads, sampler, 100)
        sampler.free()
        assert tokens == [], (reply, vocab_model.detokenize(tokens))
    # the marker as the trigger takes it: the head after it is jumped over
    heads = CallHeads.of(constraint)
    sampler = build_sampler(vocab_model, SamplingParams(temperature=0, tools=constraint))
    reply = "{ \n" + key + ":"
    assert _walk(vocab_model, sampler, reply)
    heads.feed(reply.encode())
    tokens, sampler = jump(vocab_model, heads, sampler, 100)
    sampler.free()
    assert tokens


@pytest.mark.parametrize("fmt", [HERMES, MISTRAL], ids=lambda f: f.name)
def test_nothing_is_jumped_after_a_tag_the_trigger_does_not_take(
    vocab_model: LlamaCppModel, fmt: ToolFormat
) -> None:
    """Formats whose calls may follow text: a marker the reply mentions in passing (a token
    carries it on into `,`, so the trigger never sees it end the text) leaves the lazy grammar
    waiting, and nothing is jumped over after it, however call-like what follows; the marker
    written as a call begins, later in the same reply, is jumped after."""
    from edgebox.runtimes.llamacpp.jump_forward import CallHeads, jump

    constraint = ToolConstraint(fmt, FUNCTIONS[:1], lazy=True, parallel=True)
    marker = fmt.marker[0]
    heads = CallHeads.of(constraint)
    sampler = build_sampler(vocab_model, SamplingParams(temperature=0, tools=constraint))
    try:
        for text in (f"See {marker}, then", ' {"name": "get_weather", "arguments": {"city":'):
            assert _walk(vocab_model, sampler, text)
            for token in vocab_model.tokenize(text, add_special=False):
                heads.feed(vocab_model.piece(token))
            tokens, sampler = jump(vocab_model, heads, sampler, 100)
            assert tokens == [], vocab_model.detokenize(tokens)
        opening = "".join((*fmt.list_open, *fmt.call_open))  # `][` is one token to SmolLM2
        assert _walk(vocab_model, sampler, f" ok.\n{opening}")
        for token in vocab_model.tokenize(f" ok.\n{opening}", add_special=False):
            heads.feed(vocab_model.piece(token))
        tokens, sampler = jump(vocab_model, heads, sampler, 100)
        assert vocab_model.detokenize(tokens) == call_heads(constraint)[0][len(opening) :]
    finally:
        sampler.free()


def test_the_first_required_key_is_the_one_the_grammar_opens_the_arguments_with(
    vocab_model: LlamaCppModel,
) -> None:
    """llama.cpp's converter writes required properties first, in the order of `properties`:
    the arguments' grammar takes that key right after `{` and refuses any other. Schemas that
    are not a plain object with a required key force nothing."""
    schema = {
        "type": "object",
        "properties": {"mode": {"type": "string"}, "path": {"type": "string"}},
        "required": ["path", "mode"],
    }
    assert first_key(json.dumps(schema)) == "mode"
    constraint = ToolConstraint(GENERIC, (("f", json.dumps(schema)),), lazy=False, parallel=False)
    for key, ok in (("mode", True), ("path", False)):
        sampler = build_sampler(vocab_model, SamplingParams(temperature=0, tools=constraint))
        try:
            text = '{"tool_calls": [{"name": "f", "arguments": {"' + key + '":'
            assert _walk(vocab_model, sampler, text) is ok
        finally:
            sampler.free()
    for other in (
        {"type": "object", "properties": {"a": {}}},  # nothing required
        {"anyOf": [schema]},
        {"type": "object", "properties": {"a b": {}}, "required": ["a b"]},  # not a plain name
        {"type": "array"},
    ):
        assert first_key(json.dumps(other)) is None


PARALLEL_CASES = [
    (name, lazy, parallel)
    for name in sorted(FORMATS)
    for lazy in (False, True)
    for parallel in (False, True)
    if parallel <= FORMATS[name].parallel
]
TRICKY_ARGUMENTS = '{"city": "Oslo, \\"}{\\\\ ] é", "days": 2}'  # brackets, escapes in a string


def _head_spans(
    constraint: ToolConstraint, written: str, start: int, names: list[str]
) -> list[tuple[int, int]]:
    """Where each call's head lies in `written`: the first's, then each later one's after the
    text that starts it."""
    from edgebox.runtimes.llamacpp.tool_grammar import later_heads

    order = [f for f, _ in constraint.functions]
    laters = (later_heads(constraint) or ("", ()))[1]
    spans, at = [], start
    for i, name in enumerate(names):
        head = (call_heads(constraint) if i == 0 else laters)[order.index(name)]
        at = written.index(head, at)
        spans.append((at, at + len(head)))
        at += len(head)
    return spans


def _tail_spans(
    constraint: ToolConstraint,
    written: str,
    heads: list[tuple[int, int]],
    calls: list[dict[str, str]],
) -> list[tuple[int, int]]:
    """Where each call's tail lies in `written` (`call_tail`: from its arguments' end)."""
    from edgebox.runtimes.llamacpp.tool_grammar import call_tail

    tail = call_tail(constraint)
    spans = []
    for (start, _), call in zip(heads, calls, strict=True):
        arguments = json.dumps(json.loads(call["arguments"]))
        end = written.index(arguments, start) + len(arguments)
        assert written[end:].startswith(tail)
        spans.append((end, end + len(tail)))
    return spans


def _jumps(constraint: ToolConstraint, written: str, tags: frozenset[str]) -> list[tuple[int, str]]:
    """(where, what) `CallHeads` says is forced, `written` fed a character at a time; each is
    the text that follows there."""
    from edgebox.runtimes.llamacpp.jump_forward import CallHeads

    heads = CallHeads.of(constraint, tags)
    jumped = []
    for n in range(len(written) + 1):
        if n:
            heads.feed(written[n - 1].encode())
        forced = heads.forced()
        assert written[n:].startswith(forced), (written[:n], forced)
        if forced:
            jumped.append((n, forced))
    return jumped


@pytest.mark.parametrize(
    ("name", "lazy", "parallel"),
    PARALLEL_CASES,
    ids=[f"{n}-{'auto' if a else 'forced'}-{'list' if p else 'one'}" for n, a, p in PARALLEL_CASES],
)
def test_every_jump_in_a_reply_is_the_text_its_calls_render_as(
    name: str, lazy: bool, parallel: bool
) -> None:
    """A reply of one or more calls written out a character at a time (after some text where
    the format allows it): whatever `CallHeads` says is forced is the text that follows in the
    rendered reply and lies within a call's head — the first call's from its opening tag or
    list, each later call's from the text that starts it (`,`, or `</tool_call>` and a new
    `<tool_call>`), which is jumped over too: with one function, the whole head through its
    first key — or within its tail (`}]}`, `}\n</tool_call>`; `}` where another call may
    follow), jumped over from the arguments' end. Where the vocabulary holds a tag as one
    token, no jump holds any of it."""
    fmt = FORMATS[name]
    functions = (*FUNCTIONS, ("get_time", "{}"))
    lead = "" if fmt.anchored or not lazy else 'Sure, "one" {moment} [1].\n'
    orders = [["get_weather", "noop", "get_weather"], ["noop", "get_time"]]
    tag_sets = [frozenset(), frozenset(p for p in (*fmt.marker, *fmt.call_close) if p[0] in "<[")]
    for offered, tags in itertools.product((functions, functions[:1]), tag_sets):
        constraint = ToolConstraint(fmt, offered, lazy=lazy, parallel=parallel)
        for order in orders:
            names = [n for n in order if n in dict(offered)] or [offered[0][0]]
            names = names if parallel else names[:1]
            calls = [
                {"name": n, "arguments": TRICKY_ARGUMENTS if n == "get_weather" else "{}"}
                for n in names
            ]
            written = lead + calls_text(fmt, calls)
            spans = _head_spans(constraint, written, len(lead), names)
            tails = _tail_spans(constraint, written, spans, calls)
            jumped = _jumps(constraint, written, tags)
            tagged = [
                (m.start(), m.end()) for t in tags for m in re.finditer(re.escape(t), written)
            ]
            for n, forced in jumped:
                within = any(a <= n and n + len(forced) <= b for a, b in spans + tails)
                assert within, (n, forced)
                assert all(n + len(forced) <= a or b <= n for a, b in tagged), (n, forced)
            if lazy:  # nothing before the marker has been written
                marker_end = written.index("".join(fmt.marker)) + len("".join(fmt.marker))
                assert all(n >= marker_end for n, _ in jumped), (names, jumped)
            for a, b in spans:  # every call's head is jumped over
                assert any(a <= n < b for n, _ in jumped), (names, written[a:b])
            if len(offered) == 1:  # a later head whole, right after the text that starts it
                for a, b in spans[1:]:
                    assert (a, written[a:b]) in jumped, (names, written[a:b])
            for a, b in tails:  # every call's tail, from its arguments' end, up to a tag
                expected = written[a:b]
                expected = min((expected.split(t)[0] for t in tags), key=len, default=expected)
                assert (a, expected) in jumped or not expected, (names, expected, jumped)


@pytest.mark.parametrize("fmt", [GENERIC, HERMES], ids=lambda f: f.name)
def test_a_jumps_tokenization_check_reads_a_bounded_tail_of_the_reply(
    vocab_model: LlamaCppModel, fmt: ToolFormat
) -> None:
    """A long reply of many calls with long arguments (SmolLM2, whose tags are plain text):
    the text a jump's tokenization is checked against (`CallHeads.context`) stays a bounded
    tail of the reply, where the whole reply since its last tag would be re-tokenized at every
    jump (tens of milliseconds each, with every slot waiting, by the fortieth call); and it
    decides every jump as the whole reply does."""
    from edgebox.runtimes.llamacpp.jump_forward import JUMP_CONTEXT, CallHeads, tag_tokens

    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    constraint = ToolConstraint(fmt, (("write", json.dumps(schema)), ("noop", "{}")), True, True)
    words = "lorem ipsum dolor, sit amet é " * 100
    calls = [{"name": "write", "arguments": json.dumps({"text": words[i:]})} for i in range(12)]
    written = ("Writing them now.\n" if not fmt.anchored else "") + calls_text(fmt, calls)
    heads = CallHeads.of(constraint, tag_tokens(vocab_model, fmt))

    def same(context: str, text: str) -> bool:
        def tokens(t: str) -> list[int]:
            return vocab_model.tokenize(t, add_special=False, parse_special=False)

        return tokens(context + text) == tokens(context) + tokens(text)

    reply, checked, longest = b"", 0, 0
    for token in vocab_model.tokenize(written, add_special=False, parse_special=True):
        piece = vocab_model.piece(token)
        heads.feed(piece)
        reply, longest = reply + piece, max(longest, len(piece))
        assert len(heads.context().encode()) < JUMP_CONTEXT + longest
        text = heads.forced()
        if text:
            whole = reply.decode("utf-8", errors="replace")
            assert same(heads.context(), text) == same(whole, text), (whole[-80:], text)
            checked += 1
    assert len(reply) > 20 * JUMP_CONTEXT and checked >= len(calls)


@pytest.mark.parametrize("fmt", [GENERIC, HERMES, MISTRAL], ids=lambda f: f.name)
@pytest.mark.parametrize("lazy", [False, True], ids=["required", "auto"])
def test_a_tails_tokenization_check_reads_the_reply_up_to_its_last_token(
    vocab_model: LlamaCppModel, fmt: ToolFormat, lazy: bool
) -> None:
    """A reply of one call written a token at a time, none jumped (SmolLM2: `}}` closes the
    arguments and the call at once): while the rest of the call's tail is due after the call
    closed, the text its jump's tokenization is checked against still ends where the reply
    does, so the check decides as the whole reply would."""
    from edgebox.runtimes.llamacpp.jump_forward import CallHeads, tag_tokens

    constraint = ToolConstraint(fmt, FUNCTIONS, lazy, False)
    lead = "Sure.\n" if lazy and not fmt.anchored else ""
    written = lead + calls_text(fmt, [{"name": "noop", "arguments": '{"a": {}}'}])
    heads = CallHeads.of(constraint, tag_tokens(vocab_model, fmt))
    reply, due = b"", 0
    for token in vocab_model.tokenize(written, add_special=False, parse_special=True):
        piece = vocab_model.piece(token)
        heads.feed(piece)
        reply += piece
        if heads.forced() and heads.done:  # the call closed, its tail not yet all written
            assert reply.decode().endswith(heads.context()), (reply[-40:], heads.context())
            due += 1
    assert due >= (1 if fmt is not MISTRAL else 0)
