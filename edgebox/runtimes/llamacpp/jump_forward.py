"""Jump forward over a tool call's head: text the call grammar allows only one way is
tokenized and decoded in one step instead of sampled a token a step.

A forced call (`required`, or a named function) begins with its list opening and, with one
function, its whole head (`{"tool_calls": [{"name": "read_file", "arguments":`), which the
engine prefills with the prompt. Later in a reply: after a lazy grammar's marker (tool_choice
auto), the rest of the head up to the name; once the name is told apart from the others,
the rest of it and `", "arguments":`. Each jump is checked three ways before it is taken:
its tokens spell the text exactly, the reply so far tokenizes the same with or without it
(so the next turn's prompt, which tokenizes the whole reply, finds it in the prefix cache),
and the request's grammar accepts every token (on a clone: a grammar that banned one
would abort the process if it were accepted).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.sampling import Sampler
from edgebox.runtimes.llamacpp.tool_grammar import call_heads, forced_after
from edgebox.runtimes.tool_format import ToolConstraint


@dataclass(eq=False)
class CallHeads:
    """A reply's start while it may still be a call's head (`tool_grammar.forced_after`);
    `done` once it is past or off the heads, after which it costs nothing per token."""

    constraint: ToolConstraint
    heads: tuple[str, ...]
    reply: str = ""
    done: bool = False

    @classmethod
    def of(cls, constraint: ToolConstraint) -> CallHeads | None:
        heads = call_heads(constraint)
        return None if heads is None else cls(constraint, heads)

    def feed(self, piece: bytes) -> None:
        """The next token's bytes of the reply (a head is ASCII: anything else ends it)."""
        if self.done:
            return
        try:
            self.reply += piece.decode("ascii")
        except UnicodeDecodeError:
            self.done = True

    def forced(self) -> str:
        """The text forced after the reply so far (empty for none yet)."""
        if self.done:
            return ""
        text = forced_after(self.constraint, self.heads, self.reply)
        if text is None:
            self.done = True
            return ""
        return text


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
    if (
        heads.reply
        and _tokenize(model, heads.reply + text) != _tokenize(model, heads.reply) + tokens
    ):
        return [], sampler  # a word boundary the tokenizer would draw elsewhere: not yet
    trial = sampler.clone()
    if not trial.accept_forced(tokens):
        trial.free()
        heads.done = True  # the grammar disagrees with the heads: no more jumps here
        return [], sampler
    sampler.free()
    return tokens, trial


def _tokenize(model: LlamaCppModel, text: str) -> list[int]:
    return model.tokenize(text, add_special=False, parse_special=False)
