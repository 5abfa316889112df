"""One worker thread that runs MLX generations one at a time, in submission order.

mlx-lm's `generate_step` decodes one sequence; batching several (its `BatchGenerator`) is
left for later, so requests are serialised: a bounded queue, one running job, cancellation
and deadlines checked between tokens. MLX evaluates on a thread-local stream, so the model
loaded on the caller's thread is safe to use from the worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edgebox.runtimes.base import (
    BackendError,
    ContextLengthError,
    EventSink,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    GrammarError,
    RuntimeStats,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from edgebox.runtimes.jobs import GenerationJob, JobMetrics, JobQueue, Workers, request_timeout
from edgebox.runtimes.text import StopMatcher


@dataclass(frozen=True)
class MlxConfig:
    n_ctx: int = 4096  # capped at the model's trained context
    max_queue: int = 64
    request_timeout: float | None = 600.0
    prefill_step: int = 512  # prompt tokens per forward pass


def _one_per_waiting(waiting: int) -> float:
    return 1.0 + waiting


class MlxEngine:
    """Serialises generations of one mlx-lm model on a worker thread."""

    def __init__(self, model: Any, tokenizer: Any, *, n_ctx: int, config: MlxConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.config = config
        self._queue: JobQueue[GenerationJob] = JobQueue(
            config.max_queue,
            retry_after=_one_per_waiting,
            closed_message="the mlx runtime is closed",
        )
        self._metrics = JobMetrics(self._queue.cond, steps=False)
        self._workers = Workers(self._queue, 1, self._run, self._failed, name="edgebox-mlx")

    def submit(self, request: GenerationRequest, sink: EventSink) -> GenerationJob:
        if request.export_kv or request.kv is not None:
            raise BackendError("the mlx runtime does not export or import KV state")
        s = request.sampling
        if s.grammar or s.json_mode or s.json_schema is not None:
            raise GrammarError("the mlx runtime does not support grammars or JSON output modes")
        check_prompt(request.prompt_tokens, self.n_ctx)
        timeout = request_timeout(request, self.config.request_timeout)
        job = GenerationJob(request=request, sink=sink, timeout=timeout)
        self._queue.put(job)
        return job

    def stats(self) -> RuntimeStats:
        with self._queue.cond:
            running, queued = len(self._workers.running), len(self._queue)
            return self._metrics.stats(slots=1, running=running, queued=queued)

    def close(self) -> None:
        waiting = self._workers.close(cancel_running=True, timeout=30)
        for job in waiting:
            job.sink(FinishEvent("cancelled", len(job.request.prompt_tokens), 0))

    def _failed(self, job: GenerationJob, exc: Exception) -> None:
        job.sink(FinishEvent("error", len(job.request.prompt_tokens), 0, error=str(exc)))

    def _run(self, job: GenerationJob) -> None:
        if job.cancelled:
            return self._finish(job, "cancelled", 0)
        if job.overdue(time.monotonic()):
            return self._finish(job, "timeout", 0)
        n, reason, tail = self._stream(job, self._generate(job.request))
        self._finish(job, reason, n, tail)

    def _finish(self, job: GenerationJob, reason: FinishReason, n: int, text: str = "") -> None:
        self._metrics.totals(prompt=len(job.request.prompt_tokens), generated=n)
        job.finish(reason, n, text=text)

    def _generate(self, request: GenerationRequest) -> Iterable[tuple[Any, Any]]:
        """mlx-lm's token stream for the request: (token, logprobs) per step."""
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        prompt = list(request.prompt_tokens)
        limit = self.n_ctx - len(prompt)
        if request.max_tokens is not None:
            limit = min(limit, request.max_tokens)
        if request.sampling.seed is not None:
            mx.random.seed(request.sampling.seed)
        sampler, processors = _sampling(request, self.tokenizer.eos_token_ids)
        return generate_step(
            mx.array(prompt),
            self.model,
            max_tokens=limit,
            sampler=sampler,
            logits_processors=processors,
            prefill_step_size=self.config.prefill_step,
        )

    def _stream(
        self, job: GenerationJob, steps: Iterable[tuple[Any, Any]]
    ) -> tuple[int, FinishReason, str]:
        """Send each token's event until a stop, the end, cancellation or the deadline;
        returns the tokens generated, why it ended and the text held back till the end."""
        request = job.request
        eos = set(self.tokenizer.eos_token_ids)
        detok = self.tokenizer.detokenizer
        stops = StopMatcher(request.stop)
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
            self._metrics.produced(1)
            if stops.stopped:
                reason = "stop"
                break
            if job.cancelled:
                reason = "cancelled"
                break
            if job.overdue(time.monotonic()):
                reason = "timeout"
                break
        tail = ""
        if not stops.stopped:
            detok.finalize()
            tail = stops.feed(detok.last_segment) + stops.flush()
        return n, reason, tail

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


def _sampling(request: GenerationRequest, eos: Iterable[int]) -> tuple[Any, list[Any]]:
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
        logit_bias=_biases(s, eos) or None,
        repetition_penalty=s.repeat_penalty if s.repeat_penalty != 1.0 else None,
        presence_penalty=s.presence_penalty or None,
        frequency_penalty=s.frequency_penalty or None,
    )
    return sampler, processors


def _biases(s: SamplingParams, eos: Iterable[int]) -> dict[int, float]:
    """The request's logit biases, every end-of-sequence token banned for ignore_eos."""
    biases = dict(s.logit_bias)
    if s.ignore_eos:
        biases.update((token, -math.inf) for token in eos)
    return biases


def check_prompt(prompt: Sequence[int], n_ctx: int) -> None:
    """Refuse an empty prompt or one that leaves no room to generate."""
    if not prompt:
        raise BackendError("the prompt is empty")
    if len(prompt) >= n_ctx:
        raise ContextLengthError(
            f"the prompt is {len(prompt)} tokens; this model's context is {n_ctx} tokens"
        )
