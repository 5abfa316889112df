"""One worker thread that runs MLX generations one at a time, in submission order.

mlx-lm's `generate_step` decodes one sequence; batching several (its `BatchGenerator`) is
left for later, so requests are serialised: a bounded queue, one running job, cancellation
and deadlines checked between tokens. MLX evaluates on a thread-local stream, so the model
loaded on the caller's thread is safe to use from the worker.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgebox.runtimes.base import (
    BackendError,
    ContextLengthError,
    EventSink,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    GrammarError,
    QueueFullError,
    RuntimeStats,
    TokenEvent,
    TokenLogprob,
)
from edgebox.runtimes.text import StopMatcher


@dataclass(frozen=True)
class MlxConfig:
    n_ctx: int = 4096  # capped at the model's trained context
    max_queue: int = 64
    request_timeout: float | None = 600.0
    prefill_step: int = 512  # prompt tokens per forward pass


@dataclass
class _Job:
    request: GenerationRequest
    sink: EventSink
    deadline: float | None
    submitted: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class MlxEngine:
    """Serialises generations of one mlx-lm model on a worker thread."""

    def __init__(self, model: Any, tokenizer: Any, *, n_ctx: int, config: MlxConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.config = config
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._running = 0
        self._current: _Job | None = None
        self._closed = False
        self._totals = {"prompt": 0, "generated": 0}
        self._recent: collections.deque[float] = collections.deque()  # token times, last 5 s
        self._thread = threading.Thread(target=self._loop, name="edgebox-mlx", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest, sink: EventSink) -> _Job:
        if request.export_kv or request.kv is not None:
            raise BackendError("the mlx runtime does not export or import KV state")
        s = request.sampling
        if s.grammar or s.json_mode or s.json_schema is not None:
            raise GrammarError("the mlx runtime does not support grammars or JSON output modes")
        check_prompt(request.prompt_tokens, self.n_ctx)
        timeout = request.timeout if request.timeout is not None else self.config.request_timeout
        job = _Job(request, sink, None if timeout is None else time.monotonic() + timeout)
        with self._cond:
            if self._closed:
                raise BackendError("the mlx runtime is closed")
            if len(self._queue) >= self.config.max_queue:
                raise QueueFullError(
                    f"the node's queue is full ({self.config.max_queue} waiting)",
                    retry_after=1.0 + len(self._queue),
                )
            self._queue.append(job)
            self._cond.notify()
        return job

    def stats(self) -> RuntimeStats:
        with self._cond:
            cutoff = time.monotonic() - 5.0
            while self._recent and self._recent[0] < cutoff:
                self._recent.popleft()
            return RuntimeStats(
                slots=1,
                running=self._running,
                queued=len(self._queue),
                prompt_tokens_total=self._totals["prompt"],
                cached_tokens_total=0,
                generated_tokens_total=self._totals["generated"],
                decode_tokens_per_s=len(self._recent) / 5.0,
            )

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            if self._current is not None:
                self._current.cancel()  # stops at its next token
            self._cond.notify_all()
        for job in pending:
            job.sink(FinishEvent("cancelled", len(job.request.prompt_tokens), 0))
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
                self._running = 1
                self._current = job
            try:
                self._run(job)
            except Exception as exc:  # a failed generation must not kill the worker
                job.sink(FinishEvent("error", len(job.request.prompt_tokens), 0, error=str(exc)))
            finally:
                with self._cond:
                    self._running = 0
                    self._current = None

    def _run(self, job: _Job) -> None:
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        request = job.request
        prompt = list(request.prompt_tokens)
        wait = time.monotonic() - job.submitted
        limit = self.n_ctx - len(prompt)
        if request.max_tokens is not None:
            limit = min(limit, request.max_tokens)

        def finish(reason: FinishReason, n: int, text: str = "") -> None:
            with self._cond:
                self._totals["prompt"] += len(prompt)
                self._totals["generated"] += n
            job.sink(FinishEvent(reason, len(prompt), n, text=text, queue_wait_s=wait))

        if job.cancelled:
            return finish("cancelled", 0)
        if job.deadline is not None and time.monotonic() > job.deadline:
            return finish("timeout", 0)
        if request.sampling.seed is not None:
            mx.random.seed(request.sampling.seed)
        sampler, processors = _sampling(request)
        eos = set(self.tokenizer.eos_token_ids)
        detok = self.tokenizer.detokenizer
        stops = StopMatcher(request.stop)
        steps = generate_step(
            mx.array(prompt),
            self.model,
            max_tokens=limit,
            sampler=sampler,
            logits_processors=processors,
            prefill_step_size=self.config.prefill_step,
        )
        n = 0
        reason: FinishReason = "length"
        for step_token, logprobs in steps:
            token = int(step_token)
            if token in eos:
                reason = "stop"
                break
            n += 1
            detok.add_token(token)
            text = stops.feed(detok.last_segment)
            job.sink(TokenEvent(token, text, *self._logprobs(request, token, logprobs)))
            with self._cond:
                self._recent.append(time.monotonic())
            if stops.stopped:
                reason = "stop"
                break
            if job.cancelled:
                reason = "cancelled"
                break
            if job.deadline is not None and time.monotonic() > job.deadline:
                reason = "timeout"
                break
        tail = ""
        if not stops.stopped:
            detok.finalize()
            tail = stops.feed(detok.last_segment) + stops.flush()
        finish(reason, n, tail)

    def _logprobs(
        self, request: GenerationRequest, token: int, logprobs: Any
    ) -> tuple[TokenLogprob | None, tuple[TokenLogprob, ...]]:
        k = request.sampling.logprobs
        if k is None:
            return None, ()
        import mlx.core as mx

        chosen = self._token_logprob(token, float(logprobs[token].item()))
        if k <= 0:
            return chosen, ()
        top: Any = mx.argsort(-logprobs)[:k].tolist()
        values: Any = logprobs[mx.array(top)].tolist()
        return chosen, tuple(self._token_logprob(t, v) for t, v in zip(top, values, strict=True))

    def _token_logprob(self, token: int, value: float) -> TokenLogprob:
        text = self.tokenizer.decode([token])
        return TokenLogprob(text, value, text.encode())


def _sampling(request: GenerationRequest) -> tuple[Any, list[Any]]:
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    s = request.sampling
    temp = max(0.0, s.temperature)
    sampler = make_sampler(
        temp=temp,
        top_p=s.top_p if 0.0 < s.top_p < 1.0 else 0.0,
        min_p=s.min_p,
        top_k=max(0, s.top_k),
    )
    processors = make_logits_processors(
        repetition_penalty=s.repeat_penalty if s.repeat_penalty != 1.0 else None,
        presence_penalty=s.presence_penalty or None,
        frequency_penalty=s.frequency_penalty or None,
    )
    return sampler, processors


def check_prompt(prompt: Sequence[int], n_ctx: int) -> None:
    """Refuse an empty prompt or one that leaves no room to generate."""
    if not prompt:
        raise BackendError("the prompt is empty")
    if len(prompt) >= n_ctx:
        raise ContextLengthError(
            f"the prompt is {len(prompt)} tokens; this model's context is {n_ctx} tokens"
        )
