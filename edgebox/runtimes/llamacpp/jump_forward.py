"""Jump forward over a tool call's head: text the call grammar allows only one way is
tokenized and decoded in one step instead of sampled a token a step.

A forced call (`required`, or a named function) begins with its opening (`{"tool_calls": [`,
`<tool_call>`, `[TOOL_CALLS][`) and, with one function, its whole head (`{"tool_calls":
[{"name": "read_file", "arguments": {"path":`), which the engine prefills with the prompt.
Later in a reply: after a lazy grammar's marker (tool_choice auto), the rest of the head up
to the name; once the name is told apart from the others, the rest of it and `", "arguments":`;
in a list of calls, each later call's head once the model has written what starts it (`,`, or
a new `<tool_call>`). A tag the vocabulary holds as one token (Qwen's `<tool_call>`, Mistral's
`[TOOL_CALLS]`) is never jumped over: the model writes it as that token, and the jump starts
after it. Each jump is checked three ways before it is taken: its tokens spell the text
exactly, the reply so far tokenizes the same with or without it (so the next turn's prompt,
which tokenizes the whole reply, finds it in the prefix cache), and the request's grammar
accepts every token (on a clone: a grammar that banned one would abort the process if it were
accepted).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.sampling import Sampler
from edgebox.runtimes.llamacpp.tool_grammar import (
    call_heads,
    call_tail,
    engages,
    forced_after,
    head_written,
    later_heads,
)
from edgebox.runtimes.tool_format import ToolConstraint, ToolFormat

# What CallHeads is doing with the reply: waiting for a lazy grammar's marker (formats whose
# calls may follow text), in a call's head, in its arguments, or between two calls.
_WAIT, _HEAD, _ARGS, _GAP = range(4)
_STRING_STOP = re.compile(rb'["\\]')
_STRUCTURE = re.compile(rb'["{}\[\]]')
# The reply a jump's tokenization is checked against: at least its last this many bytes, from
# a token's start (where the tokenizer splits the text differently with the jump, it does so
# within a few words of it; the whole reply would be re-tokenized at every jump, milliseconds
# each by a long reply's tenth call, with every slot waiting).
JUMP_CONTEXT = 256


@dataclass(eq=False)
class CallHeads:
    """Follows a reply with tools for the heads of its calls (`tool_grammar.forced_after`):
    the first call's, then, where several calls may follow each other, each later call's once
    the model has written the text that starts it (`tool_grammar.later_heads`). Between heads
    it follows only the JSON nesting of the call's arguments (strings skipped in C), to find
    where the call ends; `done` once no head can follow, after which it costs nothing."""

    constraint: ToolConstraint
    heads: tuple[str, ...]  # the heads the current call may start with
    later: tuple[str, tuple[str, ...]] | None = None
    tags: frozenset[str] = frozenset()  # the format's tags this vocabulary holds as one token
    tail: str = ""  # what follows a call's arguments in every reply (`call_tail`)
    reply: str = ""  # the current call's text while it may be a head
    done: bool = False
    _mode: int = _HEAD
    _forced: str = ""
    _engaged: bool = False  # a later call's head: the grammar is past its trigger
    _depth: int = 0
    _in_string: bool = False
    _escaped: bool = False
    _tail_seen: str | None = None  # written since the arguments closed, while it is the tail's
    _gap: str = ""
    _tail: bytes = b""
    _context: deque[bytes] = field(default_factory=deque)
    _context_bytes: int = 0
    _tag_bytes: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        self._tag_bytes = frozenset(t.encode() for t in self.tags)

    @classmethod
    def of(cls, constraint: ToolConstraint, tags: frozenset[str] = frozenset()) -> CallHeads:
        heads = cls(
            constraint, call_heads(constraint), later_heads(constraint), tags, call_tail(constraint)
        )
        if constraint.lazy and not constraint.format.anchored:
            heads._mode = _WAIT  # the call may follow text: from the marker on
        else:
            heads._forced = heads._cut(forced_after(constraint, heads.heads, "") or "")
        return heads

    def feed(self, piece: bytes) -> None:
        """The next token's bytes of the reply (a tag this vocabulary holds as one token
        written as its text)."""
        if not self.active:
            return
        self._remember(piece)  # a tail's jump is checked against the reply up to here too
        if self._tail_seen is not None:
            self._follow_tail(piece)
        if self.done:
            return
        if self._mode == _WAIT:
            self._wait(piece)
        else:
            self._follow(piece)

    def stop(self) -> None:
        """Follow the reply no further: no more jumps in it."""
        self.done, self._tail_seen = True, None

    @property
    def active(self) -> bool:
        """Whether the reply is still followed: a head may come, or a call's tail is due."""
        return not self.done or self._tail_seen is not None

    def forced(self) -> str:
        """The text forced after the reply so far (empty for none yet): the rest of a head,
        or of the text after a call's arguments."""
        if self._tail_seen is not None:
            return self._cut(self.tail[len(self._tail_seen) :], self._tail_seen)
        return "" if self.done or self._mode != _HEAD else self._forced

    def _follow_tail(self, piece: bytes) -> None:
        """Follow the text after a call's arguments while it is the tail's."""
        assert self._tail_seen is not None
        seen = self._tail_seen + piece.decode("utf-8", "replace")
        self._tail_seen = seen if self.tail.startswith(seen) and seen != self.tail else None

    def context(self) -> str:
        """The reply since its last tag token, at most its last `JUMP_CONTEXT` bytes (from a
        token's start) and the token before: the stretch of text the next turn's prompt
        tokenizes around a jump."""
        return b"".join(self._context).decode("utf-8", errors="replace")

    def _remember(self, piece: bytes) -> None:
        if piece in self._tag_bytes:  # text after a tag token tokenizes on its own
            self._context.clear()
            self._context_bytes = 0
            return
        self._context.append(piece)
        self._context_bytes += len(piece)
        while self._context_bytes - len(self._context[0]) >= JUMP_CONTEXT:
            self._context_bytes -= len(self._context.popleft())

    def _wait(self, piece: bytes) -> None:
        marker = "".join(self.constraint.format.marker).encode()
        text = self._tail + piece
        at = text.rfind(marker)
        if at < 0:
            self._tail = text[max(0, len(text) - len(marker) + 1) :]
            return
        self._tail, self._mode, self.reply = b"", _HEAD, ""
        self._depth, self._in_string, self._escaped = 0, False, False
        self._follow(text[at:])

    def _follow(self, piece: bytes) -> None:
        at = 0
        while at < len(piece) and not self.done:
            if self._mode == _HEAD:
                at = self._head(piece, at)
            elif self._mode == _ARGS:
                closed = self._scan(piece, at)
                at = len(piece) if closed < 0 else self._closed(closed)
            elif self._mode == _GAP:
                at = self._between(piece, at)
            else:
                self._wait(piece[at:])
                return

    def _head(self, piece: bytes, at: int) -> int:
        """Read a head's text from `at`; where the piece goes on past the call's end."""
        closed = self._scan(piece, at)
        self.reply += piece[at : len(piece) if closed < 0 else closed].decode("ascii", "replace")
        text = None if closed >= 0 else self._forced_after()
        if text is not None:
            self._forced = self._cut(text)
            return len(piece)
        constraint = self.constraint
        engaged = self._engaged or not constraint.lazy or engages(constraint, self.reply)
        if engaged and head_written(self.heads, self.reply):
            self._mode = _ARGS  # past the head: its arguments follow
            return len(piece) if closed < 0 else self._closed(closed)
        if constraint.lazy and not constraint.format.anchored and not self._engaged:
            self._mode, rest = _WAIT, self.reply[1:]
            self._wait(rest.encode())  # not a call after all: a marker may come later
            return len(piece)
        self.done = True
        return len(piece)

    def _forced_after(self) -> str | None:
        return forced_after(self.constraint, self.heads, self.reply, engaged=self._engaged)

    def _closed(self, at: int) -> int:
        """The call's object closed just before `at`: another may follow, or nothing."""
        if self.later is None:
            self.done = True
        else:
            self._mode, self._gap = _GAP, ""
        return at

    def _between(self, piece: bytes, at: int) -> int:
        """Text between two calls: the gate that starts another, or the end of the calls."""
        assert self.later is not None
        gate, heads = self.later
        for i in range(at, len(piece)):
            if piece[i] in b" \t\n\r":
                continue
            self._gap += chr(piece[i])
            if not gate.startswith(self._gap):
                self.done = True  # the calls end here
                return len(piece)
            if len(self._gap) == len(gate):
                self._mode, self.heads, self.reply, self._engaged = _HEAD, heads, "", True
                self._tail_seen = None
                self._forced = self._cut(self._forced_after() or "")
                return i + 1
        return len(piece)

    def _scan(self, piece: bytes, at: int) -> int:
        """Follow JSON nesting through `piece` from `at`: the index just past the bracket that
        closes the current call's object, or -1. Strings are skipped with a regex search, so
        a long argument string costs one search per token."""
        level = self.constraint.format.call_level
        while at < len(piece):
            if self._escaped:
                self._escaped, at = False, at + 1
                continue
            if self._in_string:
                stop = _STRING_STOP.search(piece, at)
                if stop is None:
                    return -1
                at = stop.end()
                if piece[stop.start()] == 0x5C:  # a backslash: the next byte is escaped
                    self._escaped = True
                else:
                    self._in_string = False
                continue
            mark = _STRUCTURE.search(piece, at)
            if mark is None:
                return -1
            at, char = mark.end(), piece[mark.start()]
            if char == 0x22:
                self._in_string = True
            elif char in (0x7B, 0x5B):
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == level:
                    return at
                if self._depth == level + 1:  # the arguments closed: the tail follows
                    self._tail_seen = ""
                    self._follow_tail(piece[at:])
        return -1

    def _cut(self, text: str, written: str | None = None) -> str:
        """`text` up to the first tag this vocabulary holds as one token: the model writes
        such a tag itself (as that token), never as the several plain-text tokens a jump
        would write; nothing where what is `written` before it (the head so far) ends in part
        of one."""
        written = self.reply if written is None else written
        for tag in self.tags:
            if any(
                written.endswith(tag[:k]) and text.startswith(tag[k:]) for k in range(1, len(tag))
            ):
                return ""
            at = text.find(tag)
            text = text if at < 0 else text[:at]
        return text


def tag_tokens(model: LlamaCppModel, fmt: ToolFormat) -> frozenset[str]:
    """The format's tags (`<tool_call>`, `[TOOL_CALLS]`) that this vocabulary holds as one
    token (an added or control token): its models write them as that token."""
    pieces = {*fmt.marker, *fmt.list_open, *fmt.call_open, *fmt.call_close, *fmt.list_close}
    tags = {p for p in pieces if p not in "{}[]:," and not p.startswith('"')}
    return frozenset(
        t for t in tags if len(model.tokenize(t, add_special=False, parse_special=True)) == 1
    )


def shown_tags(model: LlamaCppModel, fmt: ToolFormat) -> frozenset[int]:
    """The format's tags this vocabulary holds as one control token (Mistral's
    `[TOOL_CALLS]`): control tokens render to nothing in output, so these are shown as their
    text, where the call parser looks for them (llama-server preserves such tokens too)."""
    ids = (model.tokenize(t, add_special=False, parse_special=True) for t in tag_tokens(model, fmt))
    return frozenset(t[0] for t in ids if not model.piece(t[0]))


def jump(
    model: LlamaCppModel, heads: CallHeads, sampler: Sampler, room: int
) -> tuple[list[int], Sampler]:
    """The tokens to jump over now, fewer than `room`, and the sampling advanced over them (a
    clone; the caller's is then freed); no tokens and the caller's sampling otherwise."""
    text = heads.forced()
    if not text:
        return [], sampler
    tokens = _tokenize(model, text)
    if not tokens or len(tokens) >= room:
        return [], sampler
    if b"".join(model.piece(t) for t in tokens) != text.encode():
        return [], sampler
    context = heads.context()
    if context and _tokenize(model, context + text) != _tokenize(model, context) + tokens:
        return [], sampler  # a word boundary the tokenizer would draw elsewhere: not yet
    trial = sampler.clone()
    if not trial.accept_forced(tokens):
        trial.free()
        heads.stop()  # the grammar disagrees with the heads: no more jumps here
        return [], sampler
    sampler.free()
    return tokens, trial


def _tokenize(model: LlamaCppModel, text: str) -> list[int]:
    return model.tokenize(text, add_special=False, parse_special=False)
