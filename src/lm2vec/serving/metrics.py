"""Server metrics for Prometheus, kept by prometheus_client (its own registry per server, so two
servers in one process never share counts). prometheus_client's metrics are thread-safe: they are
updated from the event loop and from the model worker thread without a lock of ours.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_TOKEN_BUCKETS = (64, 256, 1024, 4096, 8192, 16384, 65536)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    """Requests by route and status, inputs, tokens, errors by type, batch sizes, latency, queue depth."""

    def __init__(
        self, queue_depth: Callable[[], int] = lambda: 0, in_flight: Callable[[], int] = lambda: 0
    ) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("lm2vec_requests", "HTTP responses by route (unmatched: no route) and status.",
                                ["path", "status"], registry=r)
        self.errors = Counter("lm2vec_errors", "Failed requests by error type.", ["type"], registry=r)
        self.inputs = Counter("lm2vec_inputs", "Inputs embedded.", registry=r)
        self.tokens = Counter("lm2vec_tokens", "Tokens embedded.", registry=r)
        Gauge("lm2vec_queue_depth", "Inputs waiting for the model.", registry=r).set_function(queue_depth)
        Gauge("lm2vec_requests_in_flight", "Requests being served.", registry=r).set_function(in_flight)
        self.latency = Histogram("lm2vec_request_seconds", "Embedding request latency, seconds.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("lm2vec_batch_size", "Rows per forward pass.", buckets=BATCH_ROW_BUCKETS, registry=r)
        self.batch_tokens = Histogram("lm2vec_batch_tokens", "Padded tokens per forward pass.",
                                      buckets=BATCH_TOKEN_BUCKETS, registry=r)
        self.batch_seconds = Histogram("lm2vec_batch_seconds", "Forward pass time, seconds.",
                                       buckets=LATENCY_BUCKETS, registry=r)

    def request_done(self, status: int, seconds: float, error_type: str | None = None,
                     path: str = "/v1/embeddings") -> None:
        """One HTTP response of any route (404s and 405s too); latency is kept for embeddings only."""
        self.requests.labels(path=path, status=str(status)).inc()
        if path == "/v1/embeddings":
            self.latency.observe(seconds)
        if error_type:
            self.errors.labels(type=error_type).inc()

    def embedded(self, inputs: int, tokens: int) -> None:
        self.inputs.inc(inputs)
        self.tokens.inc(tokens)

    def batch_done(self, rows: int, padded_tokens: int, seconds: float) -> None:
        """Observer for the batch queue: one call per forward pass."""
        self.batch_rows.observe(rows)
        self.batch_tokens.observe(padded_tokens)
        self.batch_seconds.observe(seconds)

    def value(self, sample: str, **labels: str) -> float:
        """One sample's current value (0 if never counted), e.g. value("lm2vec_requests_total", path=..., status="200")."""
        return self.registry.get_sample_value(sample, labels) or 0.0

    def render(self) -> str:
        """The whole exposition in the Prometheus text format."""
        return generate_latest(self.registry).decode("utf-8")
