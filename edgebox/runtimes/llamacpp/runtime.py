"""The llama.cpp `Runtime`: a GGUF model, its chat template and a batching engine."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from edgebox.runtimes.base import (
    BackendError,
    Capabilities,
    Event,
    EventSink,
    FinishEvent,
    GenerationRequest,
    KVSnapshot,
    ModelInfo,
    RequestHandle,
    RuntimeStats,
    SamplingParams,
)
from edgebox.runtimes.chat_template import ChatTemplate, ControlTextError, fallback_template
from edgebox.runtimes.llamacpp import cpu_probe, kv_import
from edgebox.runtimes.llamacpp.engine import EngineConfig, LlamaCppEngine
from edgebox.runtimes.llamacpp.model import LlamaCppModel, gpu_offload_supported
from edgebox.runtimes.llamacpp.prompt_cache import PromptCache
from edgebox.runtimes.llamacpp.sampling import prepare_grammar
from edgebox.runtimes.llamacpp.special_text import ControlTokens
from edgebox.runtimes.tool_format import detect_format

_CHAT_MARKERS = ("<|im_start|>", "<|start_header_id|>", "<|assistant|>")

MAX_AUTO_PARALLEL = 8
KV_MEMORY_SHARE = 0.25  # of the memory available at start, for all slots' KV caches


def auto_parallel(kv_bytes_per_token: int, n_ctx: int, available_bytes: int) -> int:
    """Slots whose full-context KV caches fit in a quarter of the available memory, 1..8.

    Eight is where batched decode on one box stops paying (benchmarks/bench_concurrency.py);
    memory is the host's (unified on Apple and GB10; a discrete GPU's own memory is a
    tighter bound the hardware probe will supply).
    """
    per_slot = max(1, kv_bytes_per_token * n_ctx)
    fit = int(available_bytes * KV_MEMORY_SHARE) // per_slot
    return max(1, min(MAX_AUTO_PARALLEL, fit))


def chat_template_for(model: LlamaCppModel) -> ChatTemplate:
    """The GGUF's own chat template, or the fallback for its family."""
    source = model.chat_template
    if source:
        name = "gguf"
    else:
        vocab_has = {m: model.has_token_text(m) for m in _CHAT_MARKERS}
        name, source = fallback_template(model.architecture, vocab_has)
    return ChatTemplate(source, name=name, bos_token=model.bos_text, eos_token=model.eos_text)


# llama.cpp cuts text at special tokens in time quadratic in their number (16,000 chat
# turns: seconds); past this many, `ControlTokens` cuts it instead, in linear time.
LINEAR_AFTER_CONTROLS = 256


def tokenize_prompt(model: LlamaCppModel, text: str, *, add_special: bool = True) -> list[int]:
    # A rendered chat prompt may already start with BOS text; never add a second one.
    add_bos = add_special and not (model.bos_text and text.startswith(model.bos_text))
    return model.tokenize(text, add_special=add_bos and model.add_bos)


def tokenize_text(
    model: LlamaCppModel, controls: ControlTokens, text: str, *, add_special: bool = True
) -> list[int]:
    """`tokenize_prompt`, in linear time however many control tokens the text holds."""
    if len(text) < LINEAR_AFTER_CONTROLS * 4 or not controls.splittable:
        return tokenize_prompt(model, text, add_special=add_special)
    if controls.count(text, LINEAR_AFTER_CONTROLS) <= LINEAR_AFTER_CONTROLS:
        return tokenize_prompt(model, text, add_special=add_special)
    add_bos = add_special and not (model.bos_text and text.startswith(model.bos_text))
    return controls.tokenize([(text, False)], add_special=add_bos and model.add_bos)


def chat_tokens(
    model: LlamaCppModel,
    template: ChatTemplate,
    controls: ControlTokens,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
) -> tuple[list[int], str]:
    """A chat's prompt tokens and text; control-token text inside message contents and names
    becomes plain-text tokens (whole-text tokenization, the fast path, when there is none).
    `tools` (and messages' tool calls) reach templates that render them themselves; control
    text in those cannot be kept apart, so it is refused."""
    extra = {"tools": list(tools)} if tools else {}
    _refuse_control_text_in_tools(controls, messages, tools)
    text = template.render(messages, **extra)
    held = [
        (i, key, found)
        for i, message in enumerate(messages)
        for key in ("content", "name")
        if isinstance(value := message.get(key), str) and (found := controls.find(value))
    ]
    if not held:
        return tokenize_text(model, controls, text), text
    pieces = template.render_pieces(messages, text, **extra)
    if pieces is None or not controls.splittable:
        index, key, found = held[0]
        raise ControlTextError(
            f"message {index} holds the text of the control token {found!r} in its {key}, and "
            "this model's chat template reworks message text, so it cannot be kept apart from "
            "the template's own markup; remove it",
            index,
            key,
        )
    add_bos = not (model.bos_text and text.startswith(model.bos_text)) and model.add_bos
    return controls.tokenize(pieces, add_special=add_bos), text


def _refuse_control_text_in_tools(
    controls: ControlTokens,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
) -> None:
    for i, message in enumerate(messages):
        if message.get("tool_calls") and (
            found := controls.find(json.dumps(message["tool_calls"]))
        ):
            raise ControlTextError(
                f"message {i} holds the text of the control token {found!r} in its tool_calls; "
                "remove it",
                i,
                "tool_calls",
            )
    if tools and (found := controls.find(json.dumps(list(tools)))):
        raise ControlTextError(
            f"the tools hold the text of the control token {found!r}; remove it", -1, "tools"
        )


class LlamaCppTokenizer:
    """A GGUF's vocabulary and chat template without its weights (a router's view of a
    model): renders and tokenizes prompts exactly as `LlamaCppRuntime` does, remembering
    the tokens of recent prompt heads (`prompt_cache`)."""

    def __init__(self, path: str | Path) -> None:
        self.model = LlamaCppModel(path, vocab_only=True)
        self.template = chat_template_for(self.model)
        self.cache = PromptCache(self.model, self.tokenize)
        if self.cache.enabled and not self._cache_agrees():
            self.cache.disable()

    def encode(self, text: str) -> tuple[Sequence[int], list[str]]:
        """Tokens of a prompt, as `tokenize` gives them, and their chained block hashes."""
        return self.cache.encode(text)

    def _cache_agrees(self) -> bool:
        """Head-cached tokenization equals whole-text tokenization on sample conversations."""
        first = [
            {"role": "system", "content": "You check things carefully. " * 80},
            {"role": "user", "content": "One?"},
        ]
        later = [
            *first,
            {"role": "assistant", "content": " Two."},
            {"role": "user", "content": "3\n\n x"},
        ]
        try:
            for messages in (first, later, first):
                text = self.render_chat(messages)
                if list(self.cache.encode(text)[0]) != self.tokenize(text):
                    return False
        except BackendError:
            return False
        finally:
            self.cache.clear()
        return True

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        with self.model.in_use():
            return tokenize_prompt(self.model, text, add_special=add_special)

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        return self.template.render(messages)

    def close(self) -> None:
        self.model.close()


class LlamaCppRuntime:
    def __init__(
        self,
        path: str | Path,
        *,
        name: str,
        config: EngineConfig | None = None,
        n_gpu_layers: int = -1,
        verbose: bool = False,
        cpu_extra_buffers: str = "auto",  # on, off, or auto: what `cpu_probe` found here
    ) -> None:
        self.name = name
        all_on_gpu = n_gpu_layers < 0 and gpu_offload_supported()
        self.extra_buffers = cpu_probe.extra_buffers(
            cpu_extra_buffers, model=Path(path), all_on_gpu=all_on_gpu
        )
        self.model = LlamaCppModel(
            path,
            n_gpu_layers=n_gpu_layers,
            verbose=verbose,
            extra_buffers=self.extra_buffers.enabled,
        )
        config = config or EngineConfig()
        if config.n_ctx > self.model.n_ctx_train:
            config = dataclasses.replace(config, n_ctx=self.model.n_ctx_train)
        if config.parallel <= 0:
            available = psutil.virtual_memory().available
            slots = auto_parallel(self.model.kv_bytes_per_token(), config.n_ctx, available)
            config = dataclasses.replace(config, parallel=slots)
        self.engine = LlamaCppEngine(self.model, config)
        self.template = chat_template_for(self.model)
        self.controls = ControlTokens(self.model)
        template_name = self.template.name
        # how this model writes tool calls: its own template's format, else the generic one
        self.tool_format = detect_format(self.template.source if template_name == "gguf" else None)
        self.info = ModelInfo(
            path=str(self.model.path),
            architecture=self.model.architecture,
            n_ctx_train=self.model.n_ctx_train,
            n_ctx=self.engine.n_ctx_seq,
            n_params=self.model.n_params,
            size_bytes=self.model.size_bytes,
            description=describe(self.model),
            has_chat_template=template_name == "gguf",
            metadata={
                "chat_template": template_name,
                "tool_format": self.tool_format.name,
                "gpu_layers": self.model.n_gpu_layers,
                "n_vocab": self.model.n_vocab,
                "cpu_extra_buffers": self.extra_buffers.summary(),
            },
        )
        self.capabilities = Capabilities(
            chat=True, completions=True, grammar=True, logprobs=True, kv_export=True, batching=True
        )

    # The methods below run on preparation threads, which a request can leave behind when
    # its deadline passes: each holds the model open (`LlamaCppModel.in_use`).

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        with self.model.in_use():
            return tokenize_text(self.model, self.controls, text, add_special=add_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        with self.model.in_use():
            return self.model.detokenize(tokens)

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        return self.template.render(messages)

    def tokenize_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> tuple[list[int], str]:
        """Prompt tokens and text of a chat, message text never parsed as control tokens."""
        with self.model.in_use():
            return chat_tokens(self.model, self.template, self.controls, messages, tools)

    def prepare_sampling(self, params: SamplingParams) -> None:
        """Check and compile the request's grammar now (the caller's thread), so submitting
        it later does not parse it; raises GrammarError."""
        with self.model.in_use():
            prepare_grammar(self.model, params)

    def submit(self, request: GenerationRequest, sink: EventSink) -> RequestHandle:
        return self.engine.submit(request, sink)

    def kv_fingerprint(self) -> Mapping[str, str]:
        return self.engine.fingerprint()

    def validate_kv(self, kv: KVSnapshot) -> None:
        """Raise KVInvalidError unless the snapshot's bytes hold what it claims (any thread)."""
        kv_import.validate(self.engine, kv)

    def probe_kv(
        self, kv: KVSnapshot, timeout: float | None, done: Callable[[Exception | None], None]
    ) -> RequestHandle | None:
        """Decode one token on top of the snapshot in a free slot; `done(None)` when it can
        be used, `done(error)` when not. None: nothing to probe (the unchecked test hook)."""
        if self.engine.unchecked_kv:
            return None

        def sink(event: Event) -> None:
            if isinstance(event, FinishEvent):
                try:
                    kv_import.probe_outcome(event)
                except Exception as exc:
                    done(exc)
                else:
                    done(None)

        return self.engine.submit(kv_import.probe_request(kv, timeout), sink, probe=True)

    def health(self) -> dict[str, str]:
        """{"status": "ok"} or {"status": "degraded", "reason": ...} (recovery.EngineHealth)."""
        return self.engine.health.status()

    def prefix_cache(self) -> dict[str, object]:
        """Chained block hashes of the slots' cached tokens, for /health (routers)."""
        return self.engine.prefix_cache()

    def stats(self) -> RuntimeStats:
        return self.engine.stats()

    def close(self) -> None:
        """Stop the engine and free the model, once no preparation thread holds it."""
        if self.engine.close():
            self.model.close()


def describe(model: LlamaCppModel) -> str:
    """The model in its own words: its GGUF name, parameter count and weight type. (llama.cpp's
    own description names the architecture's size class: "llama 256M" for SmolLM2-135M.)"""
    name = model.metadata.get("general.name") or model.architecture
    params = model.n_params
    size = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"
    weights = model.description.split(" ", 2)[-1] if model.description.count(" ") >= 2 else ""
    return f"{name}, {size} params" + (f", {weights}" if weights else "")
