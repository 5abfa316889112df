"""The job core every runtime shares: admission, deadlines, cancellation and the counters.

A request becomes a `Job` when a runtime accepts it. `JobQueue` admits it (bounded: a full
queue refuses with `QueueFullError` and a retry hint) and holds it until a scheduler takes it;
`Workers` is that scheduler for runtimes that serve one job per thread (MLX, ONNX,
TensorRT-LLM), while the llama.cpp engine batches jobs from the same queue on its own thread.
`JobMetrics` keeps what `RuntimeStats` reports (token totals, decode steps, the recent rate),
so every runtime counts the same way. Backends keep only what is theirs: decoding, running a
session, proxying.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from edgebox.runtimes.base import (
    BATCH_BUCKETS,
    BackendError,
    EventSink,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    QueueFullError,
    RuntimeStats,
)

RATE_WINDOW_S = 5.0  # the recent rate (decode_tokens_per_s) counts this many seconds back
JOB_TIME_EWMA = 0.2  # weight of the newest job in the average job time behind retry hints


@dataclass(eq=False, kw_only=True)
class Job:
    """One accepted request's life: when it came, when work on it began, its deadline, and
    whether its caller cancelled it (any thread may; the scheduler notices between steps)."""

    timeout: float | None = None  # seconds from submission, queue wait included
    submitted: float = field(default_factory=time.monotonic)
    admitted: float | None = None  # when a slot or worker took it
    cancelled: bool = False

    @property
    def deadline(self) -> float | None:
        return None if self.timeout is None else self.submitted + self.timeout

    def cancel(self) -> None:
        self.cancelled = True

    def overdue(self, now: float) -> bool:
        deadline = self.deadline
        return deadline is not None and now > deadline

    def queue_wait(self, now: float) -> float:
        """Seconds from submission until work began (or until `now`, if it never did)."""
        return (self.admitted or now) - self.submitted

    def timeout_message(self, doing: str) -> str:
        return f"the request timed out after {self.timeout:g} s ({doing})"


@dataclass(eq=False, kw_only=True)
class GenerationJob(Job):
    """A generation request and the sink its events go to."""

    request: GenerationRequest
    sink: EventSink

    def finish(self, reason: FinishReason, completion_tokens: int, **fields: Any) -> None:
        """Send the FinishEvent: the prompt's size and the queue wait filled in."""
        wait = self.queue_wait(time.monotonic())
        prompt = len(self.request.prompt_tokens)
        self.sink(FinishEvent(reason, prompt, completion_tokens, queue_wait_s=wait, **fields))


def request_timeout(request: GenerationRequest, default: float | None) -> float | None:
    """The request's own timeout, else the runtime's default."""
    return request.timeout if request.timeout is not None else default


J = TypeVar("J", bound=Job)


def _no_slot() -> int:
    return 0


def _one_second(waiting: int) -> float:
    return 1.0


class JobQueue(Generic[J]):
    """The bounded admission queue, and the condition its scheduler waits on.

    `max_queue` bounds the jobs waiting for a slot: a job queued while a slot is free (its
    consumer, set in `free`, has not taken it yet) is not waiting, so two requests that arrive
    together at an idle one-slot runtime are both admitted. `retry_after(waiting)` and
    `full_message(waiting)` say what a refused caller is told; `cond` also guards whatever
    state the scheduler shares with callers (stats, slots)."""

    def __init__(
        self,
        max_queue: int,
        *,
        retry_after: Callable[[int], float] = _one_second,
        full_message: Callable[[int], str] | None = None,
        closed_message: str = "the runtime is closed",
    ) -> None:
        self.max_queue = max_queue
        self.jobs: collections.deque[J] = collections.deque()
        self.cond = threading.Condition()
        self.closing = False
        self.free: Callable[[], int] = _no_slot  # the consumer's free slots (under `cond`)
        self._retry_after = retry_after
        self._full_message = full_message or self._node_full
        self._closed_message = closed_message

    def _node_full(self, waiting: int) -> str:
        return f"the node's queue is full ({self.max_queue} waiting)"

    def put(self, job: J) -> None:
        """Admit the job, or raise QueueFullError (full) or BackendError (closed)."""
        with self.cond:
            if self.closing:
                raise BackendError(self._closed_message)
            waiting = len(self.jobs) - self.free()
            if waiting >= self.max_queue:
                raise QueueFullError(self._full_message(waiting), self._retry_after(waiting))
            self.jobs.append(job)
            self.cond.notify()

    def __len__(self) -> int:
        return len(self.jobs)

    def expired(self, now: float) -> list[J]:
        """Take the jobs whose deadline has passed out of the queue (caller holds `cond`)."""
        gone = [job for job in self.jobs if job.overdue(now)]
        for job in gone:
            self.jobs.remove(job)
        return gone

    def close(self) -> None:
        """Refuse new jobs from now on and wake the scheduler, which ends what is left."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()

    def drain(self) -> list[J]:
        """Take every waiting job out of the queue."""
        with self.cond:
            waiting = list(self.jobs)
            self.jobs.clear()
        return waiting


class Workers(Generic[J]):
    """`n` threads that take jobs from a queue in submission order and `run` each one.

    A job's `admitted` time is set when a thread takes it. An exception out of `run` goes to
    `failed(job, exc)`, never past the thread. `running` lists the jobs being run."""

    def __init__(
        self,
        queue: JobQueue[J],
        n: int,
        run: Callable[[J], None],
        failed: Callable[[J, Exception], None],
        *,
        name: str,
    ) -> None:
        self.queue = queue
        self.running: list[J] = []
        queue.free = lambda: n - len(self.running)
        self._run = run
        self._failed = failed
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(n)
        ]
        for thread in self._threads:
            thread.start()

    def _next(self) -> J | None:
        queue = self.queue
        with queue.cond:
            while not queue.jobs and not queue.closing:
                queue.cond.wait()
            if queue.closing:
                return None
            job = queue.jobs.popleft()
            job.admitted = time.monotonic()
            self.running.append(job)
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._run(job)
            except Exception as exc:  # a failed job must not kill the worker
                self._failed(job, exc)
            finally:
                with self.queue.cond:
                    self.running.remove(job)

    def close(self, *, cancel_running: bool, timeout: float | None) -> list[J]:
        """Stop taking jobs (cancelling the running ones if asked) and wait for the threads;
        returns the jobs that were still waiting, for the caller to end."""
        with self.queue.cond:
            self.queue.close()
            waiting = self.queue.drain()
            for job in self.running if cancel_running else ():
                job.cancel()  # stops at its next check
        for thread in self._threads:
            thread.join(timeout=timeout)
        return waiting


class RateWindow:
    """Items counted over the last RATE_WINDOW_S seconds (not thread-safe: callers lock)."""

    def __init__(self) -> None:
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._total = 0

    def add(self, now: float, n: int) -> None:
        self._recent.append((now, n))
        self._total += n
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        return self._total / RATE_WINDOW_S

    def _trim(self, now: float) -> None:
        recent, cutoff = self._recent, now - RATE_WINDOW_S
        while recent and recent[0][0] < cutoff:
            self._total -= recent.popleft()[1]


class JobMetrics:
    """What a runtime reports in RuntimeStats, counted the same way by every runtime.

    `lock` is the runtime's own (usually its queue's `cond`); `steps` says whether the runtime
    runs batched steps (then the batch-size histogram is reported, else left empty). Plain
    attribute increments (`generated += 1`) are for the one thread that owns the counter."""

    def __init__(self, lock: Any, *, steps: bool) -> None:
        self.lock = lock
        self.prompt = 0
        self.cached = 0
        self.generated = 0
        self.steps = 0
        self.step_seconds = 0.0
        self.batch_tokens = 0
        self.prefill_rate = 0.0  # tokens/s, an exponential average of measured steps
        self.avg_job_s = 1.0  # recent job durations, submission to finish
        self._hist: list[int] | None = [0] * len(BATCH_BUCKETS) if steps else None
        self._window = RateWindow()

    def step(self, n_tokens: int, seconds: float, produced: int = 0) -> None:
        """One batched step of `n_tokens` that took `seconds` and produced `produced`."""
        with self.lock:
            self.steps += 1
            self.batch_tokens += n_tokens
            self.step_seconds += seconds
            bucket = bisect.bisect_left(BATCH_BUCKETS, n_tokens)
            if self._hist is not None and bucket < len(BATCH_BUCKETS):
                self._hist[bucket] += 1  # larger steps count only in +Inf (steps_total)
            if produced:
                self._window.add(time.monotonic(), produced)

    def produced(self, n: int) -> None:
        """`n` items came out (tokens generated): they count in the recent rate."""
        with self.lock:
            self._window.add(time.monotonic(), n)

    def prefill_sample(self, tokens: int, seconds: float, weight: float) -> None:
        """A measured prompt-processing rate, averaged with weight `weight`."""
        with self.lock:
            sample, old = tokens / seconds, self.prefill_rate
            self.prefill_rate = sample if not old else old + weight * (sample - old)

    def job_done(self, job: Job, now: float) -> None:
        with self.lock:
            took = now - job.submitted
            self.avg_job_s = (1 - JOB_TIME_EWMA) * self.avg_job_s + JOB_TIME_EWMA * took

    def totals(self, prompt: int = 0, generated: int = 0, cached: int = 0) -> None:
        with self.lock:
            self.prompt += prompt
            self.generated += generated
            self.cached += cached

    def stats(self, *, slots: int, running: int, queued: int, **extra: Any) -> RuntimeStats:
        """RuntimeStats of these counters; `extra` fills the backend's own fields."""
        with self.lock:
            hist = () if self._hist is None else tuple(itertools.accumulate(self._hist))
            return RuntimeStats(
                slots=slots,
                running=running,
                queued=queued,
                prompt_tokens_total=self.prompt,
                cached_tokens_total=self.cached,
                generated_tokens_total=self.generated,
                steps_total=self.steps,
                step_seconds_total=self.step_seconds,
                batch_tokens_total=self.batch_tokens,
                batch_size_buckets=hist,
                decode_tokens_per_s=self._window.rate(time.monotonic()),
                prefill_tokens_per_s=self.prefill_rate,
                **extra,
            )
