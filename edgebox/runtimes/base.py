"""The one interface every backend implements, and the plain data it exchanges.

Runtimes know nothing of HTTP: the node's OpenAI app turns wire requests into
`GenerationRequest`s and the events a runtime emits back into wire responses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from edgebox.runtimes.tool_format import ToolConstraint

FinishReason = Literal["stop", "length", "cancelled", "timeout", "error"]


class BackendError(Exception):
    """A runtime could not do what was asked; the message says why and what to do."""


class ContextLengthError(BackendError):
    """The prompt does not fit in the model's context."""


class GrammarError(BackendError):
    """A structured-output constraint (JSON schema or grammar) could not be compiled."""


class ToolSchemaError(GrammarError):
    """The parameters schema of the `index`th constrained function cannot become a grammar."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class SamplingError(BackendError):
    """A sampling option this runtime cannot honour, or not for this model; `param` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class QueueFullError(BackendError):
    """The runtime's admission queue is full; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KVMismatchError(BackendError):
    """A KV snapshot was made by an incompatible engine (model, llama.cpp, KV layout)."""


class KVInvalidError(BackendError):
    """A KV snapshot's bytes do not hold what its header and fingerprint claim
    (`undecodable`: well formed, but the model cannot decode on top of it)."""

    def __init__(self, message: str, *, undecodable: bool = False) -> None:
        super().__init__(message)
        self.undecodable = undecodable


@dataclass(frozen=True)
class KVSnapshot:
    """One sequence's KV cache, taken after prefilling `tokens`, as opaque backend bytes.

    `fingerprint` names everything the bytes depend on; an engine imports a snapshot
    only when the fingerprints are equal. `logits`, when the exporter took them, are the
    raw float32 logits after the last token (one per vocabulary entry): a request whose
    prompt is exactly `tokens` samples its first token from them, as a fresh run of the
    prompt would, instead of decoding the last token again.
    """

    fingerprint: Mapping[str, str]
    tokens: Sequence[int]
    data: bytes
    logits: bytes = b""

    @property
    def size(self) -> int:
        """Bytes held: the state and the logits."""
        return len(self.data) + len(self.logits)


def fingerprint_mismatch(ours: Mapping[str, str], theirs: Mapping[str, str]) -> str | None:
    """None when equal, else a message naming each differing field."""
    diffs = [
        f"{key} {theirs.get(key, '<missing>')!r} != {ours.get(key, '<missing>')!r}"
        for key in sorted(set(ours) | set(theirs))
        if ours.get(key) != theirs.get(key)
    ]
    if not diffs:
        return None
    return "KV snapshot is incompatible with this engine (snapshot vs here): " + "; ".join(diffs)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings; temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    grammar: str | None = None  # raw GBNF, root rule `root` (llama.cpp only)
    json_mode: bool = False  # output must be one JSON value
    json_schema: Mapping[str, Any] | None = None  # output must match this JSON schema
    logprobs: int | None = None  # None: off; k >= 0: chosen token plus k alternatives
    tools: ToolConstraint | None = None  # output must be (or, lazily, may become) tool calls
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    ignore_eos: bool = False  # end-of-generation tokens are never sampled (benchmarks)


@dataclass(frozen=True)
class GenerationRequest:
    prompt_tokens: Sequence[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None  # None: until end of generation or context
    stop: Sequence[str] = ()
    timeout: float | None = None  # seconds from submission; None: the engine's default
    # Prefill only, then finish with the sequence's KV state in FinishEvent.kv, with the
    # logits after the prompt (the importer samples the first token from those).
    export_kv: bool = False
    kv: KVSnapshot | None = None  # import this prefix's KV instead of prefilling it


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: bytes


@dataclass(frozen=True)
class TokenEvent:
    """One sampled token and the text it released (may be empty while a stop
    string or a multi-byte character is still undecided)."""

    token_id: int
    text: str
    logprob: TokenLogprob | None = None
    top_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class FinishEvent:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    text: str = ""  # text held back until the end (e.g. a partial stop-string prefix)
    stop_sequence: str | None = None  # the stop string that ended it, if one did
    error: str | None = None
    # Why, for an error a client can act on: "kv_invalid" (its uploaded KV; a 400),
    # "decode_failed" (the backend failed this sequence; a 500). None: a plain 500.
    error_code: str | None = None
    queue_wait_s: float = 0.0  # from submission until a slot took the request
    kv: KVSnapshot | None = None  # set for export_kv requests


Event = TokenEvent | FinishEvent
EventSink = Callable[[Event], None]


class RequestHandle(Protocol):
    def cancel(self) -> None: ...


@dataclass(frozen=True)
class Capabilities:
    """What a runtime can do; the node routes by it (chat models never embed, and back)."""

    chat: bool = True
    completions: bool = True
    embeddings: bool = False
    grammar: bool = False
    logprobs: bool = False
    kv_export: bool = False
    batching: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is, as reported in /v1/models and to the fleet."""

    path: str
    architecture: str
    n_ctx_train: int
    n_ctx: int  # usable context per sequence
    n_params: int
    size_bytes: int
    description: str
    has_chat_template: bool
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeStats:
    slots: int
    running: int
    queued: int
    prompt_tokens_total: int
    cached_tokens_total: int
    generated_tokens_total: int
    steps_total: int = 0  # batched decode calls
    step_seconds_total: float = 0.0
    batch_tokens_total: int = 0
    # cumulative counts of steps by batch size, for the upper bounds in BATCH_BUCKETS
    batch_size_buckets: tuple[int, ...] = ()
    decode_tokens_per_s: float = 0.0  # recent aggregate generation rate
    prefill_tokens_per_s: float = 0.0  # measured prompt processing rate; 0: not measured
    decode_failures_total: int = 0  # failed batched decodes (the engine then heals)
    engine_rebuilds_total: int = 0  # backend contexts rebuilt after a failure


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Runtime(Protocol):
    """A loaded model that can tokenize, render chats and generate, off the caller's thread."""

    name: str
    info: ModelInfo
    capabilities: Capabilities

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        """Apply the model's chat template with a generation prompt appended."""
        ...

    def submit(self, request: GenerationRequest, sink: EventSink) -> RequestHandle:
        """Queue a generation; `sink` is called from the runtime's thread for each event.

        Raises QueueFullError when the bounded queue is full, KVMismatchError when
        `request.kv` came from an incompatible engine."""
        ...

    def kv_fingerprint(self) -> Mapping[str, str] | None:
        """What a KV snapshot from this runtime depends on; None without KV export."""
        ...

    def stats(self) -> RuntimeStats: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Embeddings:
    """One unit-length vector per input text, in input order, and the tokens they took."""

    vectors: Any  # numpy float32 array, shape (len(inputs), dimensions)
    prompt_tokens: int  # tokens fed to the model, after truncation, special tokens included
    token_counts: tuple[int, ...] = ()  # per input


class EmbeddingRuntime(Protocol):
    """A loaded embedding model: texts in, normalised vectors out, off the caller's thread."""

    name: str
    info: ModelInfo
    capabilities: Capabilities
    dimensions: int

    def embed(self, texts: Sequence[str]) -> Future[Embeddings]:
        """Queue the texts; the future resolves on the runtime's worker thread.

        Raises QueueFullError when the bounded queue is full."""
        ...

    def stats(self) -> RuntimeStats: ...

    def close(self) -> None: ...
