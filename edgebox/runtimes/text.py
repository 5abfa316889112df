"""Turning a stream of token bytes into text that is safe to send.

Two things make this non-trivial: a UTF-8 character can span tokens, and a stop
string can span tokens, so text that might still become part of one is held back.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass, field


def _held_suffix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


@dataclass
class StopMatcher:
    """Feeds decoded text and returns what may be released; reports when a stop string hits."""

    stops: Sequence[str]
    _pending: str = ""
    stopped: bool = False
    matched: str | None = None  # the stop string that hit

    def __post_init__(self) -> None:
        self.stops = tuple(s for s in self.stops if s)

    def feed(self, text: str) -> str:
        if not self.stops:  # most requests: nothing to match or hold back
            return text
        if self.stopped:
            return ""
        buf = self._pending + text
        hits = [(buf.find(s), s) for s in self.stops if s in buf]
        if hits:
            cut, self.matched = min(hits)
            self._pending = ""
            self.stopped = True
            return buf[:cut]
        hold = _held_suffix_len(buf, self.stops)
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """Release what was held back once generation ends without a stop hit."""
        out, self._pending = self._pending, ""
        return out


@dataclass
class TokenTextDecoder:
    """Incremental bytes-to-text decoder that never splits a multi-byte character."""

    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
