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
import time
from collections.abc import Mapping, Sequence
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
    RuntimeStats,
    SamplingError,
    TokenEvent,
)
from edgebox.runtimes.chat_template import ChatTemplate, fallback_template
from edgebox.runtimes.jobs import GenerationJob, JobMetrics, JobQueue, Workers, request_timeout
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


@dataclass(eq=False, kw_only=True)
class ProxiedJob(GenerationJob):
    """A generation proxied to trtllm-serve; `generated` is the server's latest count."""

    generated: int = 0


@dataclass(frozen=True)
class EngineFiles:
    """What edgebox reads from a TensorRT-LLM engine directory and its tokenizer files."""

    engine_config: dict[str, Any]
    tokenizer_config: dict[str, Any]

    @classmethod
    def read(cls, engine: Path, tok_dir: Path) -> EngineFiles:
        if not (tok_dir / "tokenizer.json").is_file():
            raise BackendError(
                f"no tokenizer.json in {tok_dir}: copy the model's tokenizer files into the "
                "engine directory or pass the Hugging Face checkpoint directory"
            )
        tok_cfg_path = tok_dir / "tokenizer_config.json"
        tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
        return cls(json.loads((engine / "config.json").read_text()), tok_cfg)

    @property
    def pretrained(self) -> dict[str, Any]:
        return dict(self.engine_config.get("pretrained_config", {}))

    @property
    def build(self) -> dict[str, Any]:
        return dict(self.engine_config.get("build_config", {}))


def chat_template(files: EngineFiles, architecture: str, vocab: Mapping[str, int]) -> ChatTemplate:
    """The tokenizer's chat template, or the fallback for the architecture's family."""
    tok_cfg = files.tokenizer_config
    source = tok_cfg.get("chat_template")
    if source:
        name = "tokenizer"
    else:
        markers = {m: m in vocab for m in ("<|im_start|>", "<|assistant|>")}
        name, source = fallback_template(architecture.lower(), markers)
    bos, eos = _special(tok_cfg.get("bos_token")), _special(tok_cfg.get("eos_token"))
    return ChatTemplate(source, name=name, bos_token=bos, eos_token=eos)


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
        files = EngineFiles.read(engine, tok_dir)
        self.tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        self._bos = _special(files.tokenizer_config.get("bos_token"))
        self._add_bos = bool(files.tokenizer_config.get("add_bos_token", bool(self._bos)))
        build = files.build
        n_ctx_train = int(
            files.pretrained.get("max_position_embeddings") or build.get("max_seq_len", 0)
        )
        self.n_ctx = int(build.get("max_seq_len") or n_ctx_train or 2048)
        self.slots = int(build.get("max_batch_size") or 8)
        architecture = str(files.pretrained.get("architecture", "unknown"))
        self.template = chat_template(files, architecture, self.tokenizer.get_vocab())
        self.info = self._model_info(engine, files, architecture, n_ctx_train)
        self.capabilities = Capabilities(chat=True, completions=True, batching=True)
        factory = command or (lambda port: trtllm_serve_command(engine, tok_dir, port, self.config))
        self.supervisor = ServerSupervisor(
            factory, log_path=log_path, config=self.config.supervisor
        )
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, read=None), trust_env=False)
        self._queue: JobQueue[ProxiedJob] = JobQueue(self.config.max_queue)
        self._metrics = JobMetrics(self._queue.cond, steps=False)
        self._workers = Workers(
            self._queue, self.slots, self._run, self._failed, name="edgebox-trtllm"
        )
        try:
            self.supervisor.start()
            self.served_model = self._served_model()
        except (ServerUnavailable, httpx.HTTPError) as exc:
            self.close()
            raise BackendError(f"trtllm-serve could not serve {engine}: {exc}") from exc

    def _model_info(
        self, engine: Path, files: EngineFiles, architecture: str, n_ctx_train: int
    ) -> ModelInfo:
        name = self.template.name
        return ModelInfo(
            path=str(engine),
            architecture=architecture,
            n_ctx_train=n_ctx_train or self.n_ctx,
            n_ctx=self.n_ctx,
            n_params=0,  # an engine does not record it
            size_bytes=sum(f.stat().st_size for f in engine.glob("rank*.engine")),
            description=f"{architecture} (TensorRT-LLM engine)",
            has_chat_template=name == "tokenizer",
            metadata={"chat_template": name, "n_vocab": files.pretrained.get("vocab_size", 0)},
        )

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

    def submit(self, request: GenerationRequest, sink: EventSink) -> ProxiedJob:
        s = request.sampling
        if s.grammar or s.json_mode or s.json_schema is not None:
            raise GrammarError("the trtllm runtime does not support grammars or JSON output modes")
        if s.logit_bias:
            raise SamplingError("the trtllm runtime does not support logit_bias", "logit_bias")
        if request.export_kv or request.kv is not None:
            raise BackendError("the trtllm runtime does not export or import KV state")
        if not request.prompt_tokens:
            raise BackendError("the prompt is empty")
        if len(request.prompt_tokens) >= self.n_ctx:
            raise ContextLengthError(
                f"the prompt is {len(request.prompt_tokens)} tokens; this engine's "
                f"max_seq_len is {self.n_ctx}"
            )
        timeout = request_timeout(request, self.config.request_timeout)
        job = ProxiedJob(request=request, sink=sink, timeout=timeout)
        self._queue.put(job)
        return job

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
        optional = {
            "top_k": s.top_k,
            "min_p": s.min_p,
            "seed": s.seed,
            "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty,
            "repetition_penalty": None if s.repeat_penalty == 1.0 else s.repeat_penalty,
            "stop": list(request.stop) or None,
            "ignore_eos": s.ignore_eos,  # trtllm-serve's extension, as llama-server's
        }
        body.update({k: v for k, v in optional.items() if v})
        return body

    def _run(self, job: ProxiedJob) -> None:
        reason: FinishReason = "length"
        error = None
        try:
            if job.cancelled:
                raise _Cancelled
            if not self.supervisor.wait_ready(self.config.restart_wait):
                raise ServerUnavailable("trtllm-serve is restarting; retry shortly")
            reason = self._proxy(job)
        except _Cancelled:
            reason = "cancelled"
        except (ServerUnavailable, httpx.HTTPError, ValueError) as exc:
            reason, error = "error", f"trtllm-serve: {exc}"
        finally:
            self._metrics.totals(prompt=len(job.request.prompt_tokens), generated=job.generated)
        job.finish(reason, job.generated, error=error)

    def _proxy(self, job: ProxiedJob) -> FinishReason:
        """Stream the server's answer to the job's sink until it ends, the job is cancelled
        or its deadline passes; returns why it ended."""
        reason: FinishReason = "length"
        url = self.supervisor.base_url + "/v1/completions"
        with self._client.stream("POST", url, json=self._body(job.request)) as reply:
            if reply.status_code != 200:
                detail = reply.read().decode(errors="replace")[:300]
                raise ServerUnavailable(f"answered {reply.status_code}: {detail}")
            for chunk in _sse(reply):
                for choice in chunk.get("choices", []):
                    if choice.get("text"):
                        job.sink(TokenEvent(-1, choice["text"]))
                    if choice.get("finish_reason") in ("stop", "length"):
                        reason = choice["finish_reason"]
                usage = chunk.get("usage") or {}
                job.generated = int(usage.get("completion_tokens", job.generated))
                if job.cancelled:
                    return "cancelled"
                if job.overdue(time.monotonic()):
                    return "timeout"
        return reason

    def _failed(self, job: ProxiedJob, exc: Exception) -> None:
        """An unexpected failure still ends the request (with a 500), never leaves it open."""
        job.finish("error", job.generated, error=f"trtllm-serve: {exc}")

    def kv_fingerprint(self) -> Mapping[str, str] | None:
        return None

    def stats(self) -> RuntimeStats:
        with self._queue.cond:
            running, queued = len(self._workers.running), len(self._queue)
            return self._metrics.stats(slots=self.slots, running=running, queued=queued)

    def close(self) -> None:
        self.supervisor.close()  # open streams fail fast once the child is gone
        for job in self._workers.close(cancel_running=False, timeout=None):
            job.sink(FinishEvent("cancelled", len(job.request.prompt_tokens), 0))
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
