"""Bridge from a runtime's engine thread to asyncio: submit n choices, iterate their events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from edgebox.api.errors import APIError
from edgebox.node.metrics import NodeMetrics, now
from edgebox.node.prompts import GenerationPlan
from edgebox.node.recent import RequestRecord
from edgebox.node.refusals import queue_full_error
from edgebox.runtimes.base import (
    ContextLengthError,
    Event,
    FinishEvent,
    GrammarError,
    KVMismatchError,
    KVSnapshot,
    QueueFullError,
    RequestHandle,
    Runtime,
    TokenEvent,
)


class ChoiceStreams:
    """The events of one or more sequences generated for one HTTP request.

    The plan says what to run (`GenerationPlan.requests`, one per choice), for which model,
    and since when (time to first token counts from its arrival). `start()` submits every
    choice, or none: a refusal (queue full, bad grammar) raises before a response has begun,
    so it can still become a proper 4xx.
    """

    def __init__(
        self,
        runtime: Runtime,
        plan: GenerationPlan,
        *,
        metrics: NodeMetrics,
        kv: KVSnapshot | None = None,
        record: RequestRecord | None = None,
    ) -> None:
        self._runtime = runtime
        self._record = record  # the request's entry in the node's recent requests
        self._requests = plan.requests(kv)
        self._metrics = metrics
        self._model = plan.model
        self._arrived = plan.arrived
        self._prompt_param = plan.prompt_param
        self._queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self._handles: list[RequestHandle] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue

        def sink_for(index: int) -> Callable[[Event], None]:
            def sink(event: Event) -> None:
                # RuntimeError: the loop is gone because the server is shutting down.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(queue.put_nowait, (index, event))

            return sink

        try:
            for index, request in enumerate(self._requests):
                self._handles.append(self._runtime.submit(request, sink_for(index)))
        except QueueFullError as exc:
            self.cancel()
            raise queue_full_error(exc) from exc
        except ContextLengthError as exc:
            self.cancel()
            raise APIError(
                400, str(exc), param=self._prompt_param, code="context_length_exceeded"
            ) from exc
        except GrammarError as exc:
            self.cancel()
            raise APIError(400, str(exc), param="response_format", code="invalid_value") from exc
        except KVMismatchError as exc:
            self.cancel()
            raise APIError(409, str(exc), param="x-edgebox-kv", code="kv_incompatible") from exc

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """Yields (choice index, event) until every choice has finished; cancels on exit."""
        remaining = len(self._requests)
        last_token_at: dict[int, float] = {}
        ttft = self._metrics.ttft.labels(self._model)
        itl = self._metrics.itl.labels(self._model)
        try:
            while remaining:
                index, event = await self._queue.get()
                if isinstance(event, TokenEvent):
                    t = now()
                    previous = last_token_at.get(index)
                    if previous is None:
                        ttft.observe(t - self._arrived)
                        if self._record is not None and self._record.ttft_s is None:
                            self._record.ttft_s = t - self._arrived
                    else:
                        itl.observe(t - previous)
                    last_token_at[index] = t
                elif isinstance(event, FinishEvent):
                    remaining -= 1
                    self._count(event)
                yield index, event
        finally:
            self.cancel()

    def _count(self, event: FinishEvent) -> None:
        self._metrics.queue_wait.labels(self._model).observe(event.queue_wait_s)
        held = now() - self._arrived - event.queue_wait_s
        self._metrics.service.labels(self._model).observe(max(0.0, held))
        self._metrics.generated.labels(self._model).inc(event.completion_tokens)
        self._metrics.prompt.labels(self._model).inc(event.prompt_tokens)
        self._metrics.cached.labels(self._model).inc(event.cached_tokens)
        if self._record is not None:
            self._record.completion_tokens += event.completion_tokens

    def cancel(self) -> None:
        for handle in self._handles:
            handle.cancel()
