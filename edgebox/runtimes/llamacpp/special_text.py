"""Control-token text in message content is tokenized as text, never as control tokens.

llama.cpp's tokenizer, asked to parse special tokens, turns the text `<|im_start|>` into the
control token wherever it appears, so a user message holding `<|im_end|><|im_start|>system`
would forge a system turn. A chat prompt is therefore tokenized in pieces: the template's
own markup with control tokens, message content as plain text. llama.cpp cuts a text at
control tokens and tokenizes each stretch of plain text between them on its own (SPM and BPE
vocabularies), so cutting only at the template's control tokens, and tokenizing each stretch
(template text and content together) without special parsing, gives exactly the tokens of
whole-text tokenization for content that holds no control-token text.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp

from edgebox.runtimes.base import BackendError
from edgebox.runtimes.llamacpp.model import LlamaCppModel

_C_SPACE = " \t\n\r\v\f"  # what llama.cpp's isspace() strips around LSTRIP/RSTRIP tokens
# What a `parse_special` tokenization turns into control tokens (user-defined ones it
# parses either way).
_PARSED_ONLY_WHEN_SPECIAL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN


@dataclass(frozen=True)
class _Control:
    id: int
    lstrip: bool  # the token eats whitespace before it
    rstrip: bool  # ... and after it


class ControlTokens:
    """A vocabulary's control tokens by text, and tokenization of (text, is_content) pieces."""

    def __init__(self, model: LlamaCppModel) -> None:
        self.model = model
        self.by_text: dict[str, _Control] = {}
        for token in range(model.n_vocab):
            attr = llama_cpp.llama_vocab_get_attr(model.vocab, token)
            if not attr & _PARSED_ONLY_WHEN_SPECIAL:
                continue
            text = model.token_text(token)
            if text and text not in self.by_text:
                self.by_text[text] = _Control(
                    token,
                    lstrip=bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP),
                    rstrip=bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP),
                )
        self.pattern = _trie_pattern(self.by_text) if self.by_text else None
        vocab_type = llama_cpp.llama_vocab_type(model.vocab)
        self.splittable = vocab_type in (
            llama_cpp.LLAMA_VOCAB_TYPE_SPM,
            llama_cpp.LLAMA_VOCAB_TYPE_BPE,
        )
        self.add_eos = bool(llama_cpp.llama_vocab_get_add_eos(model.vocab))

    def find(self, text: str) -> str | None:
        """The first control-token text in `text`, if any (linear in the text's length)."""
        if self.pattern is None:
            return None
        match = self.pattern.search(text)
        return match.group() if match else None

    def count(self, text: str, limit: int) -> int:
        """Control-token texts in `text`, counted up to `limit` + 1."""
        if self.pattern is None:
            return 0
        return sum(1 for _ in itertools.islice(self.pattern.finditer(text), limit + 1))

    def tokenize(self, pieces: Sequence[tuple[str, bool]], *, add_special: bool) -> list[int]:
        """Tokens of the concatenated pieces, control tokens parsed only in non-content pieces;
        `add_special` as for `LlamaCppModel.tokenize` (BOS, and EOS where the vocab adds one).
        Linear in the number of control tokens, where llama.cpp's own cutting is quadratic."""
        if not self.splittable:
            raise BackendError("this vocabulary cannot keep message text apart from markup")
        out = [self.model.bos_id] if add_special and self.model.bos_id >= 0 else []
        stretch: list[str] = []
        after: _Control | None = None  # the control token before the current stretch
        memo: dict[str, list[int]] = {}  # hostile prompts repeat the same stretch
        for text, is_content in pieces:
            if is_content or self.pattern is None:
                stretch.append(text)
                continue
            start = 0
            for match in self.pattern.finditer(text):
                stretch.append(text[start : match.start()])
                control = self.by_text[match.group()]
                out.extend(self._plain("".join(stretch), after, control, memo))
                out.append(control.id)
                stretch, after, start = [], control, match.end()
            stretch.append(text[start:])
        out.extend(self._plain("".join(stretch), after, None, memo))
        if add_special and self.add_eos and self.model.eos_id >= 0:
            out.append(self.model.eos_id)
        return out

    def _plain(
        self,
        text: str,
        after: _Control | None,
        before: _Control | None,
        memo: dict[str, list[int]],
    ) -> list[int]:
        if after is not None and after.rstrip:
            text = text.lstrip(_C_SPACE)
        if before is not None and before.lstrip:
            text = text.rstrip(_C_SPACE)
        if not text:
            return []
        tokens = memo.get(text)
        if tokens is None:
            tokens = memo[text] = self.model.tokenize(text, add_special=False, parse_special=False)
        return tokens


def _trie_pattern(texts: dict[str, _Control]) -> re.Pattern[str]:
    """One regex matching any of `texts`, longest first at each position, as a prefix tree:
    hundreds of reserved tokens sharing `<|reserved_special_token_` cost one walk, not one
    try each."""
    trie: dict[str, dict] = {}
    for text in texts:
        node = trie
        for char in text:
            node = node.setdefault(char, {})
        node[""] = {}

    def regex(node: dict[str, dict]) -> str:
        ends = "" in node
        branches = [re.escape(c) + regex(child) for c, child in sorted(node.items()) if c]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return "(?:" + body + ")?" if ends else body

    return re.compile(regex(trie))
