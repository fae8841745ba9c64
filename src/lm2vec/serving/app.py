"""OpenAI-compatible embedding server: FastAPI transport in front of the micro-batching queue.

    POST /v1/embeddings   OpenAI request/response shape (+ optional `instruction` and `precision`)
    GET  /v1/models       the one served model
    GET  /health          200 while serving, 503 while shutting down
    GET  /metrics         Prometheus text

The transport only authenticates, reads bounded bodies, validates (serving/schema.py), tokenizes and
awaits the queue (serving/queue.py), which owns the model's single worker thread. Vectors are
L2-normalised by default because OpenAI's are unit vectors; `--no-normalize` serves raw `encode`
output. `dimensions` and `precision` go through `Encoder.encode`'s own truncation and quantization
(core/postprocess.py). Graceful shutdown comes from uvicorn: it stops accepting, waits for in-flight requests,
then runs the lifespan exit, which drains and stops the worker.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lm2vec.core.postprocess import check_dimensions, quantizer
from lm2vec.core.tokenization import TokenizedText
from lm2vec.serving.metrics import CONTENT_TYPE, ServerMetrics
from lm2vec.serving.queue import BatchQueue, QueueClosed, QueueFull, QueueSettings
from lm2vec.serving.schema import (
    ApiError,
    check_token_ids,
    embedding_response,
    error_body,
    invalid,
    parse_inputs,
    parse_request,
    shape_vectors,
)


@dataclass
class ServerSettings:
    """Limits and behaviour of one server; every limit answers with a documented 4xx/5xx."""

    model_name: str = "lm2vec"
    max_inputs: int = 512  # inputs per request (400 above)
    max_body_bytes: int = 8 * 1024 * 1024  # request body (413 above)
    truncate: bool = False  # inputs over the encoder's max_length: cut (True) or refuse with 400 (False)
    normalize: bool = True  # unit vectors, like OpenAI
    request_timeout_s: float = 60.0  # 504 after this long in queue + model
    retry_after_s: int = 1  # Retry-After header on 503
    api_key: str | None = None  # Bearer token; None = open
    queue: QueueSettings = field(default_factory=QueueSettings)

    def __post_init__(self) -> None:
        if self.max_inputs > self.queue.max_queue_inputs:
            raise ValueError("max_inputs must not exceed the queue size, or a full request could never fit")


def make_embed_fn(encoder, normalize: bool):
    """Rows -> vectors exactly as `Encoder.encode` computes them (same collate, embed, normalise)."""

    def embed(rows: list[TokenizedText]) -> np.ndarray:
        with torch.inference_mode():
            vectors = encoder.embed(encoder.collate(rows))
            if normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.cpu().numpy()

    return embed


class EmbeddingService:
    """Turns a validated request into rows, queues them and shapes the answer."""

    def __init__(self, encoder, settings: ServerSettings) -> None:
        self.encoder, self.settings = encoder, settings
        self.metrics = ServerMetrics(lambda: self.queue.depth, lambda: self.in_flight)
        self.queue = BatchQueue(
            make_embed_fn(encoder, settings.normalize),
            encoder.embedding_dim,
            settings.queue,
            observer=self.metrics.batch_done,
        )
        self.vocab_size = encoder.model.get_input_embeddings().num_embeddings
        self.special_ids = set(encoder.tokenizer.all_special_ids)
        self._tokenizer_lock = threading.Lock()  # fast tokenizers are not safe to share between threads
        self.in_flight = 0  # requests between body read and response (the event loop alone updates it)
        self.draining = False  # set on SIGTERM: new requests get 503 shutting_down, accepted ones finish

    def _tokenize(self, texts: list[str], instruction: str | None) -> list[TokenizedText]:
        with self._tokenizer_lock:
            return self.encoder.tokenize([(instruction, text) for text in texts])

    def _token_rows(self, batch: list[list[int]]) -> list[TokenizedText]:
        """Token-id input as given; leading special ids (a BOS) are attended but not pooled, like text."""
        check_token_ids(batch, self.vocab_size)
        limit = self.encoder.config.max_length
        rows = []
        for ids in batch:
            kept = ids[:limit]
            skip = 0
            if not getattr(self.encoder.config, "pool_leading_specials", True):
                while skip < len(kept) - 1 and kept[skip] in self.special_ids:
                    skip += 1
            rows.append(TokenizedText(ids=kept, skip=skip, truncated=len(ids) > limit))
        return rows

    async def rows_for(self, body: bytes) -> tuple[object, list[TokenizedText]]:
        request = parse_request(body)
        kind, inputs = parse_inputs(request.input)
        if len(inputs) > self.settings.max_inputs:
            raise invalid(
                f"{len(inputs)} inputs in one request; the limit is {self.settings.max_inputs}",
                "too_many_inputs",
            )
        self._check_output(request, len(inputs))
        if kind == "tokens" and request.instruction:
            raise invalid(
                "'instruction' applies to text input, not token ids", "invalid_value", "instruction"
            )
        rows = (
            await run_in_threadpool(self._tokenize, inputs, request.instruction)
            if kind == "text"
            else self._token_rows(inputs)
        )
        too_long = [i for i, row in enumerate(rows) if row.truncated]
        if too_long and not self.settings.truncate:
            raise invalid(
                f"input[{too_long[0]}] is longer than the model's maximum of "
                f"{self.encoder.config.max_length} tokens",
                "context_length_exceeded",
                f"input[{too_long[0]}]",
            )
        return request, rows

    def _check_output(self, request, count: int) -> None:
        """`dimensions` and `precision` refused before any model work, with the encoder's own checks."""
        try:
            check_dimensions(request.dimensions, self.encoder.embedding_dim)
        except ValueError as error:
            raise invalid(f"'dimensions': {error}", "invalid_value", "dimensions") from None
        if request.precision.endswith("int8") and count < 2:
            raise invalid(
                f"precision '{request.precision}' takes each dimension's range from the request's inputs; "
                "send at least 2 (or use binary / ubinary, which need no ranges)",
                "invalid_value",
                "precision",
            )
        if request.precision != "float32":
            try:
                quantizer(request.precision)
            except ImportError as error:
                raise ApiError(501, str(error), "precision_unavailable", "server_error", "precision") from None

    async def embed(self, body: bytes) -> dict:
        self.in_flight += 1
        try:
            return await self._embed(body)
        finally:
            self.in_flight -= 1

    async def _embed(self, body: bytes) -> dict:
        if self.draining:
            raise self._unavailable("server is shutting down", "shutting_down")
        request, rows = await self.rows_for(body)
        try:
            future = self.queue.submit(rows)
        except QueueFull as error:
            raise self._unavailable(f"server busy: {error}", "queue_full") from None
        except QueueClosed:
            raise self._unavailable("server is shutting down", "shutting_down") from None
        try:
            vectors = await asyncio.wait_for(asyncio.wrap_future(future), self.settings.request_timeout_s)
        except TimeoutError:
            raise ApiError(
                504,
                f"request took longer than {self.settings.request_timeout_s:g} s",
                "timeout",
                "timeout_error",
            ) from None
        tokens = sum(len(row.ids) for row in rows)
        self.metrics.embedded(len(rows), tokens)
        vectors = shape_vectors(vectors, request.dimensions, self.settings.normalize, request.precision)
        return embedding_response(vectors, request.encoding_format, self.settings.model_name, tokens)

    def _unavailable(self, message: str, code: str) -> ApiError:
        return ApiError(
            503, message, code, "server_overloaded", headers={"Retry-After": str(self.settings.retry_after_s)}
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it (or its declared length) passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}", "request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes", "request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def check_api_key(request: Request, api_key: str | None) -> None:
    """OpenAI-style `Authorization: Bearer KEY`, compared in constant time."""
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), api_key.encode()):
        raise ApiError(
            401,
            "invalid or missing API key (send 'Authorization: Bearer KEY')",
            "invalid_api_key",
            "authentication_error",
            param=None,
        )


def create_app(encoder, settings: ServerSettings | None = None) -> FastAPI:
    """The ASGI app; the model worker starts with the app's lifespan and drains at its end."""
    settings = settings or ServerSettings()
    service = EmbeddingService(encoder, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.queue.start()
        yield
        await run_in_threadpool(service.queue.close, settings.request_timeout_s)

    app = FastAPI(title="lm2vec embeddings", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    _add_error_handlers(app)
    _add_routes(app, service)
    return app


def _add_routes(app: FastAPI, service: EmbeddingService) -> None:
    settings = service.settings

    @app.middleware("http")
    async def count_responses(request: Request, call_next):
        """Every response of every route, 4xx included, goes into the metrics."""
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            service.metrics.request_done(500, time.perf_counter() - started, "internal_error", _route(request))
            raise
        code = getattr(request.state, "error_code", None)
        service.metrics.request_done(response.status_code, time.perf_counter() - started, code, _route(request))
        return response

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        check_api_key(request, settings.api_key)
        return JSONResponse(await service.embed(await read_body(request, settings.max_body_bytes)))

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_api_key(request, settings.api_key)
        return {
            "object": "list",
            "data": [{"id": settings.model_name, "object": "model", "owned_by": "lm2vec"}],
        }

    @app.get("/health")
    async def health() -> JSONResponse:
        stopping = service.draining or service.queue.closed
        return JSONResponse(
            {"status": "shutting_down" if stopping else "ok", "model": settings.model_name,
             "queue_depth": service.queue.depth},
            status_code=503 if stopping else 200,
        )

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type=CONTENT_TYPE)


def _route(request: Request) -> str:
    """The matched route's path template (bounded label values), or 'unmatched'."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def _add_error_handlers(app: FastAPI) -> None:
    """Every failure leaves as OpenAI-shaped JSON; an unexpected one is a 500, never a dead server."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        request.state.error_code = error.code
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        request.state.error_code = code
        return JSONResponse(
            error_body(str(error.detail), "invalid_request_error", code), status_code=error.status_code
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        message = f"internal error: {type(error).__name__}: {error}"[:500]
        return JSONResponse(error_body(message, "server_error", "internal_error"), status_code=500)


class DrainingServer(uvicorn.Server):
    """uvicorn with a drain phase and a clean exit status.

    On the first SIGTERM/SIGINT the socket stays open for `drain_s`: new requests get 503
    `shutting_down` (load balancers and clients see why) while accepted ones finish. Then uvicorn's own
    graceful shutdown closes the socket and waits for the last responses. A second signal stops at
    once. The handled signal is not re-raised, so the process exits 0.
    """

    def __init__(self, config: uvicorn.Config, service: EmbeddingService, drain_s: float) -> None:
        super().__init__(config)
        self.service, self.drain_s, self.drain_until = service, drain_s, 0.0

    def handle_exit(self, sig, frame) -> None:
        if self.service.draining:  # a second signal: uvicorn's way (graceful now, forced on a third)
            self.force_exit = self.should_exit
            self.should_exit = True
            return
        self.service.draining = True
        self.drain_until = time.monotonic() + self.drain_s

    async def on_tick(self, counter: int) -> bool:
        if self.service.draining and not self.should_exit:
            late = time.monotonic() - self.drain_until
            idle = self.service.in_flight == 0
            self.should_exit = (late >= 0 and idle) or late > self.service.settings.request_timeout_s
        return await super().on_tick(counter)


def serve(
    encoder, settings: ServerSettings, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info",
    drain_s: float = 2.0,
) -> None:
    """Run uvicorn until SIGINT/SIGTERM; accepted requests are answered before it exits (status 0)."""
    app = create_app(encoder, settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        workers=1,
    )
    DrainingServer(config, app.state.service, drain_s).run()
