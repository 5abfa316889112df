"""Chat templates: the GGUF's own jinja template, rendered in a sandbox, or a fallback.

Templates come from model files, i.e. from strangers, so they run in Jinja's
immutable sandbox. A model without a template (base models such as the bundled
Gemma 3 270M) gets the conversation format its architecture family was trained on.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgebox.runtimes.base import BackendError

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Gemma has no system role: the system text is prepended to the first user turn.
_GEMMA = (
    "{{ bos_token }}{% set sys = namespace(text='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set sys.text = sys.text + m['content'] + '\n\n' %}"
    "{% else %}{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{% if role == 'user' %}{{ sys.text }}{% set sys.text = '' %}"
    "{% endif %}{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

_LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

_PHI3 = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Plain transcript for base models whose vocabulary has no chat markers at all.
_TRANSCRIPT = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def fallback_template(architecture: str, vocab_has: Mapping[str, bool]) -> tuple[str, str]:
    """Pick a template for a model whose GGUF carries none; returns (name, template)."""
    if architecture.startswith("gemma"):
        return "gemma", _GEMMA
    if vocab_has.get("<|start_header_id|>"):
        return "llama3", _LLAMA3
    if architecture.startswith("phi3") and vocab_has.get("<|assistant|>"):
        return "phi3", _PHI3
    if vocab_has.get("<|im_start|>"):
        return "chatml", _CHATML
    return "transcript", _TRANSCRIPT


# Fields of a message whose text comes from the client, not from the template.
_CLIENT_TEXT = ("content", "name")


class ControlTextError(BackendError):
    """Message text holds control-token text that cannot be kept apart from the template's
    own markup; `index` is the message's position, `field` "content" or "name"."""

    def __init__(self, message: str, index: int, field: str = "content") -> None:
        super().__init__(message)
        self.index = index
        self.field = field


def _raise_exception(message: str) -> None:
    raise BackendError(f"chat template rejected the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled, sandboxed chat template."""

    def __init__(self, source: str, *, name: str, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, undefined=jinja2.ChainableUndefined
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise BackendError(f"the model's chat template does not compile: {exc}") from exc
        self.name = name
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: Sequence[Mapping[str, Any]], **extra: Any) -> str:
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except BackendError:
            raise
        except jinja2.TemplateError as exc:
            raise BackendError(f"chat template failed to render: {exc}") from exc

    def render_pieces(
        self, messages: Sequence[Mapping[str, Any]], rendered: str, **extra: Any
    ) -> list[tuple[str, bool]] | None:
        """`rendered` (this template's rendering of `messages`) cut into (text, is_client_text)
        pieces: message contents and names apart from the template's own markup.

        The template is rendered again with each client text replaced by a unique mark, and
        the marks are put back (as given, or trimmed, for templates that `| trim`); None when
        that does not reproduce `rendered`, i.e. the template transforms or inspects the text.
        """
        nonce = secrets.token_hex(6)
        texts: dict[str, str] = {}
        marked_messages = []
        for message in messages:
            marked = dict(message)
            for key in _CLIENT_TEXT:
                value = message.get(key)
                if isinstance(value, str) and value:
                    mark = f"\ue000{nonce}.{len(texts)}\ue001"
                    texts[mark] = value
                    marked[key] = mark
            marked_messages.append(marked)
        parts = re.split(f"(\ue000{nonce}\\.\\d+\ue001)", self.render(marked_messages, **extra))
        return _put_back(parts, texts, rendered)


def _put_back(
    parts: list[str], texts: dict[str, str], rendered: str
) -> list[tuple[str, bool]] | None:
    """Template text (even parts) and marks (odd parts) matched against `rendered` in order."""
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if not rendered.startswith(part, cursor):
                return None
            pieces.append((part, False))
            cursor += len(part)
            continue
        value, after = texts[part], parts[i + 1]
        for candidate in (value, value.strip(), value.lstrip(), value.rstrip()):
            end = cursor + len(candidate)
            if rendered.startswith(candidate, cursor) and rendered.startswith(after, end):
                pieces.append((candidate, True))
                cursor = end
                break
        else:
            return None
    if cursor != len(rendered):
        return None
    return [p for p in pieces if p[0]]
