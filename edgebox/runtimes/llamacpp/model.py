"""A GGUF model loaded through llama.cpp's C API: weights, vocabulary and metadata.

Contexts (KV caches) are created by the engine; one model can back several.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import llama_cpp

from edgebox.runtimes.base import BackendError

_backend_lock = threading.Lock()
_backend_ready = False
_verbose = False
_captures: list[list[str]] = []


def _log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's log: shown with --verbose, otherwise dropped (errors surface through
    return codes), and handed to any active `captured_log()`."""
    message = text.decode("utf-8", errors="replace")
    for capture in _captures:
        capture.append(message)
    if _verbose:
        sys.stderr.write(message)


_LOG_CALLBACK = llama_cpp.llama_log_callback(_log)


def init_backend(verbose: bool = False) -> None:
    global _backend_ready, _verbose
    with _backend_lock:
        _verbose = _verbose or verbose
        if _backend_ready:
            return
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _backend_ready = True


@contextlib.contextmanager
def captured_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines while the block runs (for facts the C API does
    not expose, such as what flash-attention `auto` resolved to)."""
    lines: list[str] = []
    with _backend_lock:
        _captures.append(lines)
    try:
        yield lines
    finally:
        with _backend_lock:
            _captures.remove(lines)


def gpu_offload_supported() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


def _read_str(fn: object, *args: object, size: int = 256) -> str:
    buf = ctypes.create_string_buffer(size)
    n = fn(*args, buf, size)  # type: ignore[operator]
    if n < 0:
        return ""
    if n >= size:  # truncated: retry with the exact size
        buf = ctypes.create_string_buffer(n + 1)
        fn(*args, buf, n + 1)  # type: ignore[operator]
    return buf.value.decode("utf-8", errors="replace")


class LlamaCppModel:
    """Owns a `llama_model*`; tokenization and piece lookup are thread-safe."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_gpu_layers: int = -1,
        verbose: bool = False,
        vocab_only: bool = False,  # vocabulary and metadata only: tokenizing, no generation
        extra_buffers: bool = True,  # repacked/AMX CPU weights (`cpu_probe` says if they work)
    ):
        init_backend(verbose)
        self._users = 0  # threads inside `in_use`; `close` waits for them
        self._users_done = threading.Condition()
        self._closing = False  # `close` is waiting: no new users
        self._held = threading.local()  # this thread's depth of `in_use` (nested ones pass)
        self.path = Path(path)
        if not self.path.is_file():
            raise BackendError(f"model file not found: {self.path}")
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = (
            (999 if n_gpu_layers < 0 else n_gpu_layers) if gpu_offload_supported() else 0
        )
        self.n_gpu_layers = params.n_gpu_layers
        params.vocab_only = vocab_only
        # Extra buffer types repack CPU weights at load (CPU_REPACK, AMX); on CPUs that
        # advertise AMX but fault on it they kill the process at the first long prompt.
        params.use_extra_bufts = extra_buffers and not vocab_only
        self.extra_buffers = bool(params.use_extra_bufts)
        ptr = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not ptr:
            raise BackendError(
                f"llama.cpp could not load {self.path.name}: not a GGUF file, or an "
                "architecture this llama.cpp build does not know"
            )
        self.ptr = ptr
        self.vocab = llama_cpp.llama_model_get_vocab(ptr)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self._pieces: list[bytes | None] = [None] * self.n_vocab  # see `piece`
        self.metadata = self._read_metadata()
        self.architecture = self.metadata.get("general.architecture", "unknown")
        self.vocab_only = vocab_only
        if not vocab_only:  # a vocab-only model has no hyperparameters (llama.cpp aborts)
            self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(ptr)
            self.n_layer = llama_cpp.llama_model_n_layer(ptr)
            self.n_head_kv = llama_cpp.llama_model_n_head_kv(ptr)
            self.n_embd = llama_cpp.llama_model_n_embd(ptr)
            self.n_params = llama_cpp.llama_model_n_params(ptr)
            self.size_bytes = llama_cpp.llama_model_size(ptr)
            self.n_swa = llama_cpp.llama_model_n_swa(ptr)  # 0: no sliding-window layers
            # a recurrent state is not a list of cells by position (Mamba, hybrids)
            self.recurrent = bool(
                llama_cpp.llama_model_is_recurrent(ptr) or llama_cpp.llama_model_is_hybrid(ptr)
            )
            _ = self.eog_set  # read here, off the event loop (~90 ms for a 262k vocabulary)
        self.description = _read_str(llama_cpp.llama_model_desc, ptr)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos_id = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos_id = llama_cpp.llama_vocab_eos(self.vocab)
        self.bos_text = self.token_text(self.bos_id) if self.bos_id >= 0 else ""
        self.eos_text = self.token_text(self.eos_id) if self.eos_id >= 0 else ""

    def _read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in range(llama_cpp.llama_model_meta_count(self.ptr)):
            key = _read_str(llama_cpp.llama_model_meta_key_by_index, self.ptr, i)
            # Large arrays (token lists) are summarised by llama.cpp; the chat template is long.
            size = 65536 if key == "tokenizer.chat_template" else 512
            out[key] = _read_str(
                llama_cpp.llama_model_meta_val_str_by_index, self.ptr, i, size=size
            )
        return out

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template") or None

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), buf, capacity, add_special, parse_special
        )
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), buf, capacity, add_special, parse_special
            )
        if n < 0:
            raise BackendError("tokenization failed")
        return list(buf[:n])

    def token_bytes(self, token: int, special: bool) -> bytes:
        """The bytes of one token read from llama.cpp; `special`: control tokens as their text."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:  # longer than 64 bytes: -n is the size needed
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def piece(self, token: int) -> bytes:
        """The bytes a token renders to in output (control tokens render to nothing), read
        from llama.cpp once per token id: a list indexed by id, filled as tokens first appear
        (8 bytes a slot, 2 MiB for a 262k vocabulary, plus ~40 bytes per piece read)."""
        pieces = self._pieces
        if 0 <= token < len(pieces):
            cached = pieces[token]
            if cached is None:
                cached = pieces[token] = self.token_bytes(token, special=False)
            return cached
        return self.token_bytes(token, special=False)

    def token_text(self, token: int) -> str:
        """The token's own text, special tokens included (for templates and logprobs)."""
        return self.token_bytes(token, special=True).decode("utf-8", errors="replace")

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return token in self.eog_set

    @functools.cached_property
    def eog_tokens(self) -> tuple[int, ...]:
        """Every end-of-generation token (end of turn, end of text...), read once."""
        is_eog, vocab = llama_cpp.llama_vocab_is_eog, self.vocab
        return tuple(t for t in range(self.n_vocab) if is_eog(vocab, t))

    @functools.cached_property
    def eog_set(self) -> frozenset[int]:
        """`eog_tokens` for membership tests (once per generated token)."""
        return frozenset(self.eog_tokens)

    def has_token_text(self, text: str) -> bool:
        """Whether `text` is one special token of this vocabulary."""
        ids = self.tokenize(text, add_special=False, parse_special=True)
        return len(ids) == 1 and self.token_text(ids[0]) == text

    def kv_bytes_per_token(self, bytes_per_element: float = 2.0) -> int:
        head_dim = self.n_embd // max(1, llama_cpp.llama_model_n_head(self.ptr))
        return int(2 * self.n_layer * self.n_head_kv * head_dim * bytes_per_element)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Hold the model open while the block runs: work on a preparation thread (tokenizing,
        compiling a grammar, building its token tree) may outlive the request that started
        it, whose deadline passed; unloading the model then waits for it instead of freeing
        the vocabulary under it. Raises BackendError once the model is closed or closing
        (a block nested in one this thread holds always passes)."""
        depth = getattr(self._held, "depth", 0)
        if not depth:
            with self._users_done:
                if self._closing or not self.ptr:
                    raise BackendError(f"{self.path.name} has been unloaded")
                self._users += 1
        self._held.depth = depth + 1
        try:
            yield
        finally:
            self._held.depth = depth
            if not depth:
                with self._users_done:
                    self._users -= 1
                    self._users_done.notify_all()

    def close(self) -> None:
        users_done = getattr(self, "_users_done", None)
        if users_done is None:  # __init__ failed before the model was loaded
            return
        with users_done:
            self._closing = True  # new users are refused, so a stream of them cannot hold it off
            users_done.wait_for(lambda: self._users == 0)
            ptr, self.ptr = getattr(self, "ptr", None), None
        if ptr:
            llama_cpp.llama_model_free(ptr)

    def __del__(self) -> None:
        self.close()
