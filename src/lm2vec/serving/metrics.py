"""Server metrics in the Prometheus text format, hand-written (a dependency for ~80 lines is not worth it).

Counters and histograms are updated from the event loop and the model worker thread, so every update
and the rendering take one lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_TOKEN_BUCKETS = (64, 256, 1024, 4096, 8192, 16384, 65536)


@dataclass
class Histogram:
    """A cumulative-bucket histogram as Prometheus expects it."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        lines += [f'{name}_bucket{{le="{_num(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        lines += [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {_num(self.total)}",
            f"{name}_count {self.count}",
        ]
        return lines


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class ServerMetrics:
    """Requests by status, inputs, tokens, errors by type, batch sizes, latency, queue depth."""

    def __init__(
        self, queue_depth: Callable[[], int] = lambda: 0, in_flight: Callable[[], int] = lambda: 0
    ) -> None:
        self._lock = threading.Lock()
        self._queue_depth, self._in_flight = queue_depth, in_flight
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.inputs = 0
        self.tokens = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_rows = Histogram(BATCH_ROW_BUCKETS)
        self.batch_tokens = Histogram(BATCH_TOKEN_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)

    def request_done(self, status: int, seconds: float, error_type: str | None = None,
                     path: str = "/v1/embeddings") -> None:
        """One HTTP response of any route (404s and 405s too); latency is kept for embeddings only."""
        with self._lock:
            self.requests[(path, str(status))] += 1
            if path == "/v1/embeddings":
                self.latency.observe(seconds)
            if error_type:
                self.errors[error_type] += 1

    def embedded(self, inputs: int, tokens: int) -> None:
        with self._lock:
            self.inputs += inputs
            self.tokens += tokens

    def batch_done(self, rows: int, padded_tokens: int, seconds: float) -> None:
        """Observer for the batch queue: one call per forward pass."""
        with self._lock:
            self.batch_rows.observe(rows)
            self.batch_tokens.observe(padded_tokens)
            self.batch_seconds.observe(seconds)

    def render(self) -> str:
        """The whole exposition, Prometheus text format 0.0.4."""
        p = "lm2vec"
        with self._lock:
            lines = [
                f"# HELP {p}_requests_total HTTP responses by route (unmatched: no route) and status.",
                f"# TYPE {p}_requests_total counter",
            ]
            lines += [f'{p}_requests_total{{path="{path}",status="{s}"}} {n}'
                      for (path, s), n in sorted(self.requests.items())]
            lines += [
                f"# HELP {p}_errors_total Failed requests by error type.",
                f"# TYPE {p}_errors_total counter",
            ]
            lines += [f'{p}_errors_total{{type="{t}"}} {n}' for t, n in sorted(self.errors.items())]
            lines += [
                f"# HELP {p}_inputs_total Inputs embedded.",
                f"# TYPE {p}_inputs_total counter",
                f"{p}_inputs_total {self.inputs}",
                f"# HELP {p}_tokens_total Tokens embedded.",
                f"# TYPE {p}_tokens_total counter",
                f"{p}_tokens_total {self.tokens}",
                f"# HELP {p}_queue_depth Inputs waiting for the model.",
                f"# TYPE {p}_queue_depth gauge",
                f"{p}_queue_depth {self._queue_depth()}",
                f"# HELP {p}_requests_in_flight Requests being served.",
                f"# TYPE {p}_requests_in_flight gauge",
                f"{p}_requests_in_flight {self._in_flight()}",
            ]
            lines += self.latency.render(f"{p}_request_seconds", "Embedding request latency, seconds.")
            lines += self.batch_rows.render(f"{p}_batch_size", "Rows per forward pass.")
            lines += self.batch_tokens.render(f"{p}_batch_tokens", "Padded tokens per forward pass.")
            lines += self.batch_seconds.render(f"{p}_batch_seconds", "Forward pass time, seconds.")
        return "\n".join(lines) + "\n"
