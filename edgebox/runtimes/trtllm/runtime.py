"""The TensorRT-LLM `Runtime`: a supervised `trtllm-serve` child, with generation proxied to it.

edgebox keeps tokenisation and the chat template (from the engine's tokenizer files) so a
prompt is counted and checked the same way as on every other runtime; the token ids go to the
child's `/v1/completions` and its streamed text comes back as events. trtllm-serve's OpenAI
stream carries text, not token ids, so `TokenEvent.token_id` is -1 here, and the token counts
come from the server's `usage`. Not verified on hardware: tested against a stand-in server.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgebox.runtimes.base import (
    BackendError,
    Capabilities,
    ContextLengthError,
    EventSink,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    GrammarError,
    ModelInfo,
    QueueFullError,
    RuntimeStats,
    TokenEvent,
)
from edgebox.runtimes.chat_template import ChatTemplate, fallback_template
from edgebox.runtimes.trtllm.supervisor import (
    CommandFactory,
    ServerSupervisor,
    ServerUnavailable,
    SupervisorConfig,
)


@dataclass(frozen=True)
class TrtllmConfig:
    executable: str = "trtllm-serve"  # may carry arguments, split like a shell would
    backend: str | None = "tensorrt"  # `--backend`; None for releases whose default is the engine
    max_queue: int = 64  # requests waiting beyond the engine's max_batch_size
    request_timeout: float | None = 600.0
    restart_wait: float = 60.0  # how long a request waits for a restarting server
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)


def trtllm_serve_command(
    engine_dir: Path, tokenizer_dir: Path, port: int, config: TrtllmConfig
) -> list[str]:
    """argv for `trtllm-serve ENGINE_DIR` bound to loopback only."""
    argv = [*shlex.split(config.executable), str(engine_dir), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--tokenizer", str(tokenizer_dir)]
    if config.backend:
        argv += ["--backend", config.backend]
    return argv


def _special(value: Any) -> str:
    """tokenizer_config.json writes special tokens as strings or as {"content": ...}."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value or "")


class _Cancelled(Exception):
    pass


@dataclass
class _Handle:
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class TrtllmRuntime:
    """A TensorRT-LLM engine directory served by a supervised `trtllm-serve`."""

    def __init__(
        self,
        engine_dir: str | Path,
        *,
        name: str,
        tokenizer_dir: str | Path | None = None,
        config: TrtllmConfig | None = None,
        log_path: Path | None = None,
        command: CommandFactory | None = None,
    ) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BackendError('the trtllm runtime needs: pip install "edgebox[trtllm]"') from exc
        self.name = name
        self.config = config or TrtllmConfig()
        engine = Path(engine_dir)
        tok_dir = Path(tokenizer_dir) if tokenizer_dir else engine
        if not (tok_dir / "tokenizer.json").is_file():
            raise BackendError(
                f"no tokenizer.json in {tok_dir}: copy the model's tokenizer files into the "
                "engine directory or pass the Hugging Face checkpoint directory"
            )
        engine_cfg = json.loads((engine / "config.json").read_text())
        tok_cfg_path = tok_dir / "tokenizer_config.json"
        tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
        self.tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        self._bos = _special(tok_cfg.get("bos_token"))
        self._add_bos = bool(tok_cfg.get("add_bos_token", bool(self._bos)))
        pretrained = engine_cfg.get("pretrained_config", {})
        build = engine_cfg.get("build_config", {})
        architecture = str(pretrained.get("architecture", "unknown"))
        n_ctx_train = int(pretrained.get("max_position_embeddings") or build.get("max_seq_len", 0))
        self.n_ctx = int(build.get("max_seq_len") or n_ctx_train or 2048)
        self.slots = int(build.get("max_batch_size") or 8)
        source = tok_cfg.get("chat_template")
        if source:
            template_name = "tokenizer"
        else:
            vocab = self.tokenizer.get_vocab()
            template_name, source = fallback_template(
                architecture.lower(), {m: m in vocab for m in ("<|im_start|>", "<|assistant|>")}
            )
        self.template = ChatTemplate(
            source, name=template_name, bos_token=self._bos,
            eos_token=_special(tok_cfg.get("eos_token")),
        )  # fmt: skip
        self.info = ModelInfo(
            path=str(engine),
            architecture=architecture,
            n_ctx_train=n_ctx_train or self.n_ctx,
            n_ctx=self.n_ctx,
            n_params=0,  # an engine does not record it
            size_bytes=sum(f.stat().st_size for f in engine.glob("rank*.engine")),
            description=f"{architecture} (TensorRT-LLM engine)",
            has_chat_template=template_name == "tokenizer",
            metadata={"chat_template": template_name, "n_vocab": pretrained.get("vocab_size", 0)},
        )
        self.capabilities = Capabilities(chat=True, completions=True, batching=True)
        factory = command or (lambda port: trtllm_serve_command(engine, tok_dir, port, self.config))
        self.supervisor = ServerSupervisor(
            factory, log_path=log_path, config=self.config.supervisor
        )
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, read=None))
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="edgebox-trtllm")
        self._lock = threading.Lock()
        self._counts = {"running": 0, "waiting": 0, "prompt": 0, "generated": 0}
        try:
            self.supervisor.start()
            self.served_model = self._served_model()
        except (ServerUnavailable, httpx.HTTPError) as exc:
            self.close()
            raise BackendError(f"trtllm-serve could not serve {engine}: {exc}") from exc

    def _served_model(self) -> str:
        """The id trtllm-serve lists (releases differ in how they name the engine)."""
        reply = self._client.get(self.supervisor.base_url + "/v1/models")
        reply.raise_for_status()
        return str(reply.json()["data"][0]["id"])

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        add = add_special and self._add_bos and not (self._bos and text.startswith(self._bos))
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add and self._bos:
            bos = self.tokenizer.token_to_id(self._bos)
            ids = ([bos] if bos is not None else []) + ids
        return list(ids)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=False))

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        return self.template.render(messages)

    def submit(self, request: GenerationRequest, sink: EventSink) -> _Handle:
        s = request.sampling
        if s.grammar or s.json_mode or s.json_schema is not None:
            raise GrammarError("the trtllm runtime does not support grammars or JSON output modes")
        if request.export_kv or request.kv is not None:
            raise BackendError("the trtllm runtime does not export or import KV state")
        if not request.prompt_tokens:
            raise BackendError("the prompt is empty")
        if len(request.prompt_tokens) >= self.n_ctx:
            raise ContextLengthError(
                f"the prompt is {len(request.prompt_tokens)} tokens; this engine's "
                f"max_seq_len is {self.n_ctx}"
            )
        with self._lock:
            if self._counts["waiting"] >= self.config.max_queue:
                raise QueueFullError(
                    f"the node's queue is full ({self.config.max_queue} waiting)", retry_after=1.0
                )
            self._counts["waiting"] += 1
        handle = _Handle()
        self._pool.submit(self._run, request, sink, handle, time.monotonic())
        return handle

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        s = request.sampling
        limit = self.n_ctx - len(request.prompt_tokens)
        body: dict[str, Any] = {
            "model": self.served_model,
            "prompt": list(request.prompt_tokens),
            "max_tokens": min(limit, request.max_tokens or limit),
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        optional = {"top_k": s.top_k, "min_p": s.min_p, "seed": s.seed,
                    "frequency_penalty": s.frequency_penalty,
                    "presence_penalty": s.presence_penalty,
                    "repetition_penalty": None if s.repeat_penalty == 1.0 else s.repeat_penalty,
                    "stop": list(request.stop) or None}  # fmt: skip
        body.update({k: v for k, v in optional.items() if v})
        return body

    def _run(
        self, request: GenerationRequest, sink: EventSink, handle: _Handle, submitted: float
    ) -> None:
        with self._lock:
            self._counts["waiting"] -= 1
            self._counts["running"] += 1
        wait = time.monotonic() - submitted
        n_prompt = len(request.prompt_tokens)
        timeout = request.timeout if request.timeout is not None else self.config.request_timeout
        deadline = None if timeout is None else submitted + timeout
        reason: FinishReason = "length"
        counted, error = 0, None
        try:
            if handle.cancelled.is_set():
                raise _Cancelled
            if not self.supervisor.wait_ready(self.config.restart_wait):
                raise ServerUnavailable("trtllm-serve is restarting; retry shortly")
            url = self.supervisor.base_url + "/v1/completions"
            with self._client.stream("POST", url, json=self._body(request)) as reply:
                if reply.status_code != 200:
                    detail = reply.read().decode(errors="replace")[:300]
                    raise ServerUnavailable(f"answered {reply.status_code}: {detail}")
                for chunk in _sse(reply):
                    for choice in chunk.get("choices", []):
                        if choice.get("text"):
                            sink(TokenEvent(-1, choice["text"]))
                        if choice.get("finish_reason") in ("stop", "length"):
                            reason = choice["finish_reason"]
                    usage = chunk.get("usage") or {}
                    counted = int(usage.get("completion_tokens", counted))
                    if handle.cancelled.is_set():
                        reason = "cancelled"
                        break
                    if deadline is not None and time.monotonic() > deadline:
                        reason = "timeout"
                        break
        except _Cancelled:
            reason = "cancelled"
        except (ServerUnavailable, httpx.HTTPError, ValueError) as exc:
            reason, error = "error", f"trtllm-serve: {exc}"
        finally:
            with self._lock:
                self._counts["running"] -= 1
                self._counts["prompt"] += n_prompt
                self._counts["generated"] += counted
        sink(FinishEvent(reason, n_prompt, counted, error=error, queue_wait_s=wait))

    def kv_fingerprint(self) -> Mapping[str, str] | None:
        return None

    def stats(self) -> RuntimeStats:
        with self._lock:
            c = dict(self._counts)
        return RuntimeStats(
            slots=self.slots,
            running=c["running"],
            queued=c["waiting"],
            prompt_tokens_total=c["prompt"],
            cached_tokens_total=0,
            generated_tokens_total=c["generated"],
        )

    def close(self) -> None:
        self.supervisor.close()  # open streams fail fast once the child is gone
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


def _sse(reply: httpx.Response) -> Any:
    """The JSON objects of an OpenAI server-sent event stream, until `[DONE]`."""
    for line in reply.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)
