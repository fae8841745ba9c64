"""The micro-batching queue between HTTP handlers and the model (no web framework in here).

Handlers `submit` already-tokenized rows and get a `concurrent.futures.Future`; ONE worker thread owns
the model. Each round it takes the waiting requests (up to `round_batches` x `max_batch_size` rows, at
least one request), plans length-sorted token-budget batches over all their rows with `plan_batches` (the same
code as `Encoder.encode`), runs them, and resolves each request's future with its own rows in order.
Merging requests is what makes small concurrent requests cheap: one forward pass for many callers.

A request cancelled before its round starts (client timeout) is dropped; one cancelled later is
simply not answered. A failing batch fails only the requests that had rows in it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from lm2vec.core.batching import plan_batches
from lm2vec.core.tokenization import TokenizedText

EmbedFn = Callable[[list[TokenizedText]], np.ndarray]  # rows -> (len(rows), D) float32
BatchObserver = Callable[[int, int, float], None]  # (rows, padded tokens, seconds) per forward pass


class QueueFull(RuntimeError):
    """More rows are waiting than the queue allows; the caller should retry later."""


class QueueClosed(RuntimeError):
    """The queue is shutting down and accepts no new requests."""


@dataclass
class _Job:
    rows: list[TokenizedText]
    future: Future
    out: np.ndarray | None = None
    remaining: int = 0
    failed: bool = False


@dataclass
class QueueSettings:
    """How rows are merged and how much may wait."""

    max_batch_size: int = 32  # rows per forward pass; 1 disables batching
    max_batch_tokens: int | None = 8192  # padded tokens per forward pass
    max_queue_inputs: int = 4096  # rows waiting before submit raises QueueFull
    max_wait_s: float = 0.002  # after the first request arrives, wait this long for companions
    merge_requests: bool = True  # False: one request per round (no cross-request batching)
    round_batches: int = 4  # a round takes up to this many batches' worth of rows, so sorting them by
    # length across requests cuts padding (40% of a 32-row batch of STS sentences was padding at 1)

    def __post_init__(self) -> None:
        if min(self.max_batch_size, self.max_queue_inputs, self.round_batches) < 1 or self.max_wait_s < 0:
            raise ValueError("max_batch_size, max_queue_inputs, round_batches must be >= 1; max_wait_s >= 0")


@dataclass
class BatchQueue:
    """Merge concurrent requests into batches for one model worker thread."""

    embed: EmbedFn
    dim: int
    settings: QueueSettings = field(default_factory=QueueSettings)
    observer: BatchObserver | None = None

    def __post_init__(self) -> None:
        self._jobs: deque[_Job] = deque()
        self._depth = 0  # rows waiting (not yet taken by the worker)
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="lm2vec-model-worker", daemon=True)

    # ---- caller side ----------------------------------------------------------------------------
    def start(self) -> BatchQueue:
        self._thread.start()
        return self

    def submit(self, rows: list[TokenizedText]) -> Future:
        """Queue one request's rows; the future resolves to a (len(rows), D) float32 array in order."""
        if not rows:
            raise ValueError("a request needs at least one row")
        job = _Job(rows=list(rows), future=Future(), remaining=len(rows))
        with self._cond:
            if self._closed:
                raise QueueClosed("the server is shutting down")
            if self._depth + len(rows) > self.settings.max_queue_inputs:
                raise QueueFull(f"{self._depth} inputs are waiting (limit {self.settings.max_queue_inputs})")
            self._jobs.append(job)
            self._depth += len(rows)
            self._cond.notify()
        return job.future

    @property
    def depth(self) -> int:
        """Rows waiting for the worker (the queue depth reported in /metrics)."""
        return self._depth

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new requests, let the worker finish every accepted one, then stop it.

        Returns True if the worker finished within `timeout`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---- worker side ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            jobs = self._next_round()
            if not jobs:
                return
            self._run_round(jobs)

    def _next_round(self) -> list[_Job]:
        """Block for work; gather a round of requests (empty list: closed and drained)."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self.settings.merge_requests and self.settings.max_wait_s > 0 and not self._closed:
                deadline = time.monotonic() + self.settings.max_wait_s
                while (
                    self._depth < self.settings.max_batch_size and (left := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(left)
            jobs: list[_Job] = []
            rows, cap = 0, self.settings.max_batch_size * self.settings.round_batches
            while self._jobs and (not jobs or rows + len(self._jobs[0].rows) <= cap):
                job = self._jobs.popleft()
                self._depth -= len(job.rows)
                rows += len(job.rows)
                jobs.append(job)
                if not self.settings.merge_requests:
                    break
            return jobs

    def _run_round(self, jobs: list[_Job]) -> None:
        """Run every row of the round in token-budget batches and hand results back per request."""
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        flat = [(job, index) for job in live for index in range(len(job.rows))]
        if not flat:
            return
        for job in live:
            job.out = np.empty((len(job.rows), self.dim), dtype=np.float32)
        lengths = [len(job.rows[index].ids) for job, index in flat]
        s = self.settings
        for batch in plan_batches(lengths, s.max_batch_size, s.max_batch_tokens):
            self._run_batch([flat[i] for i in batch], max(lengths[i] for i in batch))

    def _run_batch(self, members: list[tuple[_Job, int]], width: int) -> None:
        """One forward pass; results (or the error) go to the requests that own its rows."""
        started = time.perf_counter()
        try:
            vectors = self.embed([job.rows[index] for job, index in members])
        except Exception as error:  # noqa: BLE001 - a bad batch must not kill the worker
            for job, _ in members:
                if not job.failed:
                    job.failed = True
                    job.future.set_exception(error)
            return
        if self.observer is not None:
            self.observer(len(members), len(members) * width, time.perf_counter() - started)
        for (job, index), vector in zip(members, vectors):
            if job.failed:
                continue
            job.out[index] = vector
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.out)
