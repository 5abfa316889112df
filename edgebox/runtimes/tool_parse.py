"""Reading tool calls out of a reply as it is generated.

`ToolCallParser` is fed the reply's text piece by piece and hands back what can be said so
far: content (text before the calls, held back only while it could still be the start of a
call marker), the start of a call (its name) and fragments of its JSON arguments, in the
order OpenAI streams them. Call markup never comes back as content, except when a reply
opens a call it never writes (cut off by a token limit before its name): that text is
returned as content rather than lost.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from edgebox.runtimes.tool_format import WS, ToolFormat

# A call object up to the colon after its arguments key, names first (the grammar's order).
_HEADER = re.compile(
    r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:', re.DOTALL
)
# The name alone, once the comma after it is written: the call is named from here (its first
# streamed event a few tokens sooner); where its arguments start is still found by _HEADER.
_NAMED = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,', re.DOTALL)


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    name: str


@dataclass(frozen=True)
class ArgsDelta:
    index: int
    text: str


Delta = ContentDelta | CallStart | ArgsDelta


def marker_state(
    text: str, marker: tuple[str, ...]
) -> tuple[Literal["full", "partial", "no"], int]:
    """Whether `text` starts with the marker (whitespace allowed between its pieces):
    ("full", end), ("partial", 0) while it may still, else ("no", 0)."""
    i = 0
    for k, piece in enumerate(marker):
        if k:
            while i < len(text) and text[i] in WS:
                i += 1
        rest = text[i : i + len(piece)]
        if len(rest) < len(piece):
            return ("partial", 0) if piece.startswith(rest) else ("no", 0)
        if rest != piece:
            return "no", 0
        i += len(piece)
    return "full", i


@dataclass
class _Call:
    start: int  # offset of its `{` in the markup
    named: bool = False
    args_key: bool = False  # the arguments' key and its colon are written
    args_depth: int = -1  # nesting inside the call object, where its arguments value sits
    args_start: int = -1
    args_end: int = -1
    emitted: int = -1  # arguments text handed out up to here
    scalar: bool = False  # arguments not an object or array: handed out whole at the end


class ToolCallParser:
    def __init__(self, fmt: ToolFormat) -> None:
        self.fmt = fmt
        self.calls = 0  # calls started (named) so far
        self._mode: Literal["text", "plain", "calls"] = "text"
        self._pending = ""
        self._markup = ""
        self._pos = 0
        self._depth = 0
        self._in_str = False
        self._escaped = False
        self._call: _Call | None = None

    def feed(self, text: str) -> list[Delta]:
        if self._mode == "plain":
            return [ContentDelta(text)] if text else []
        if self._mode == "calls":
            self._markup += text
            return self._scan()
        self._pending += text
        return self._find_marker()

    def finish(self) -> list[Delta]:
        """What is left when the reply ends."""
        if self._mode == "text":
            pending, self._pending = self._pending, ""
            return [ContentDelta(pending)] if pending else []
        if self._mode == "calls" and self.calls == 0:
            return [ContentDelta(self._markup)]
        return []

    def _find_marker(self) -> list[Delta]:
        fmt, pending = self.fmt, self._pending
        if fmt.anchored:
            head = pending.lstrip(WS)
            if not head:
                return []
            state, _ = marker_state(head, fmt.marker)
            if state == "partial":
                return []
            self._pending = ""
            if state == "no":
                self._mode = "plain"
                return [ContentDelta(pending)]
            return self._enter_calls("", head)
        marker = fmt.marker[0]
        at = pending.find(marker)
        if at >= 0:
            self._pending = ""
            return self._enter_calls(pending[:at], pending[at:])
        keep = next(
            (
                n
                for n in range(min(len(marker) - 1, len(pending)), 0, -1)
                if marker.startswith(pending[-n:])
            ),
            0,
        )
        out, self._pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
        return [ContentDelta(out)] if out else []

    def _enter_calls(self, before: str, markup: str) -> list[Delta]:
        self._mode = "calls"
        self._markup = markup
        out: list[Delta] = [ContentDelta(before)] if before else []
        return out + self._scan()

    def _scan(self) -> list[Delta]:
        out: list[Delta] = []
        markup, level = self._markup, self.fmt.call_level
        for p in range(self._pos, len(markup)):
            ch = markup[p]
            call = self._call
            if self._in_str:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_str = False
            elif ch == '"':
                self._in_str = True
            elif ch in "{[":
                if ch == "{" and call is None and self._depth == level:
                    call = self._call = _Call(start=p)
                self._depth += 1
            elif ch in "}]":
                self._depth = max(0, self._depth - 1)
                closes_args = call is not None and call.args_start >= 0 and call.args_end < 0
                if closes_args and call is not None and self._depth == call.args_depth:
                    call.args_end = p + 1
                if call is not None and self._depth == level:
                    out += self._close(call, p)
                    continue
            if call is not None and not self._in_str:
                out += self._track(call, ch, p)
        self._pos = len(markup)
        call = self._call
        if call is not None and call.named and call.args_start >= 0 and not call.scalar:
            end = call.args_end if call.args_end >= 0 else len(markup)
            if end > call.emitted:
                out.append(ArgsDelta(self.calls - 1, markup[call.emitted : end]))
                call.emitted = end
        return out

    def _track(self, call: _Call, ch: str, p: int) -> list[Delta]:
        """Name the call once its name is complete; find where its arguments start."""
        if not call.named:
            if ch == ",":
                match = _NAMED.fullmatch(self._markup, call.start, p + 1)
                if match:
                    call.named, call.args_depth = True, self._depth
                    self.calls += 1
                    name = json.loads(f'"{match.group(1)}"')
                    return [CallStart(self.calls - 1, name)]
            return []
        if not call.args_key:
            if ch == ":" and self._depth == call.args_depth:
                call.args_key = bool(_HEADER.fullmatch(self._markup, call.start, p + 1))
            return []
        if call.args_start < 0 and ch not in WS:
            call.args_start = call.emitted = p
            call.scalar = ch not in "{["
        return []

    def _close(self, call: _Call, p: int) -> list[Delta]:
        """The call object ended at `p`: whatever the stream has not said yet, say now."""
        self._call = None
        out: list[Delta] = []
        try:
            parsed = json.loads(self._markup[call.start : p + 1])
        except (ValueError, RecursionError):  # a model can nest past Python's recursion limit
            parsed = None
        args = None
        if isinstance(parsed, dict):
            args = parsed.get(self.fmt.args_key, parsed.get("arguments", parsed.get("parameters")))
        if not call.named:
            if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str):
                return out
            self.calls += 1
            out.append(CallStart(self.calls - 1, parsed["name"]))
            out.append(ArgsDelta(self.calls - 1, json.dumps({} if args is None else args)))
        elif call.scalar or call.args_start < 0:
            out.append(ArgsDelta(self.calls - 1, json.dumps({} if args is None else args)))
        elif call.args_end > call.emitted:
            out.append(ArgsDelta(self.calls - 1, self._markup[call.emitted : call.args_end]))
        return out
