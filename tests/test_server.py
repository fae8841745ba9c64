"""The embedding server: OpenAI shapes, micro-batching under load, limits, faults and shutdown.

Real uvicorn servers on 127.0.0.1 (a pre-bound socket on a free port, run in a thread) around tiny
random models, so every test exercises the same transport, queue and worker as production.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import tiny_encoder

from lm2vec.serving.app import DrainingServer, ServerSettings, create_app
from lm2vec.serving.queue import BatchQueue, QueueSettings

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "log", "quickly", "big", "red", "blue"]
POOL = [" ".join(random.Random(i).choices(WORDS, k=1 + i % 12)) for i in range(60)]


@contextmanager
def running(encoder, **settings):
    """Serve `encoder` on a free loopback port; yields (base_url, uvicorn server, service)."""
    queue = QueueSettings(**settings.pop("queue", {}))
    app = create_app(encoder, ServerSettings(model_name="tiny", queue=queue, **settings))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server, app.state.service
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def slow(encoder, seconds: float, entered: threading.Event | None = None):
    """Make every forward pass take at least `seconds` (to hold requests in the queue); `entered` is
    set when the first forward pass starts."""
    original = encoder.embed

    def embed(batch):
        if entered is not None:
            entered.set()
        time.sleep(seconds)
        return original(batch)

    encoder.embed = embed
    return encoder


def vectors_of(payload: dict) -> np.ndarray:
    return np.array([item["embedding"] for item in payload["data"]], dtype=np.float32)


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder(max_length=128)


@pytest.fixture(scope="module")
def expected(encoder):
    return dict(zip(POOL, encoder.encode(POOL, normalize=True)))


def test_openai_shape_and_vectors_equal_encode(encoder, expected):
    with running(encoder) as (url, _, _):
        texts = POOL[:5]
        reply = httpx.post(f"{url}/v1/embeddings", json={"input": texts, "model": "whatever"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["object"] == "list" and body["model"] == "tiny"
        assert [d["index"] for d in body["data"]] == list(range(5)) and body["data"][0][
            "object"
        ] == "embedding"
        ids = encoder.tokenize([(None, t) for t in texts])
        assert body["usage"] == {
            "prompt_tokens": sum(len(t.ids) for t in ids),
            "total_tokens": sum(len(t.ids) for t in ids),
        }
        assert np.abs(vectors_of(body) - np.stack([expected[t] for t in texts])).max() < 1e-5
        single = httpx.post(f"{url}/v1/embeddings", json={"input": texts[0]}).json()
        assert np.abs(vectors_of(single)[0] - expected[texts[0]]).max() < 1e-5


def test_base64_dimensions_tokens_and_instruction(encoder, expected):
    text = POOL[7]
    with running(encoder) as (url, _, _):
        def post(body):
            return httpx.post(f"{url}/v1/embeddings", json=body).json()
        raw = base64.b64decode(post({"input": [text], "encoding_format": "base64"})["data"][0]["embedding"])
        assert np.abs(np.frombuffer(raw, dtype="<f4") - expected[text]).max() < 1e-6
        short = vectors_of(post({"input": text, "dimensions": 16}))[0]
        cut = expected[text][:16]
        assert short.shape == (16,) and np.abs(short - cut / np.linalg.norm(cut)).max() < 1e-5
        [tok] = encoder.tokenize([(None, text)])
        for shape in (tok.ids, [tok.ids]):
            assert np.abs(vectors_of(post({"input": shape}))[0] - expected[text]).max() < 1e-5
        instructed = vectors_of(post({"input": [text], "instruction": "Find similar sentences:"}))[0]
        want = encoder.encode([text], instruction="Find similar sentences:", normalize=True)[0]
        assert np.abs(instructed - want).max() < 1e-5


def test_dimensions_and_precision_take_encodes_path(encoder, expected):
    """Truncation is `encode(dimensions=)`; quantized vectors are sentence-transformers' codes of the
    truncated float vectors, as integer lists or base64 of their bytes."""
    from sentence_transformers import quantize_embeddings

    texts = POOL[10:16]
    with running(encoder) as (url, _, _), httpx.Client(base_url=url) as client:
        def post(**fields):
            reply = client.post("/v1/embeddings", json={"input": texts, "dimensions": 24, **fields})
            assert reply.status_code == 200, reply.text
            return [item["embedding"] for item in reply.json()["data"]]

        floats = np.array(post(), dtype=np.float32)
        assert np.abs(floats - encoder.encode(texts, dimensions=24, normalize=True)).max() < 1e-5
        for precision, dtype, width in (("int8", np.int8, 24), ("uint8", np.uint8, 24), ("binary", np.int8, 3),
                                        ("ubinary", np.uint8, 3)):
            codes = np.array(post(precision=precision))
            assert codes.shape == (6, width) and np.array_equal(codes, quantize_embeddings(floats, precision))
            packed = post(precision=precision, encoding_format="base64")
            raw = np.stack([np.frombuffer(base64.b64decode(b), dtype=dtype) for b in packed])
            assert np.array_equal(raw, codes), precision
        invalid = client.post("/v1/embeddings", json={"input": texts, "dimensions": 65}).json()["error"]
        assert invalid["param"] == "dimensions" and "between 1 and the model's dimension 64" in invalid["message"]


def test_dimensions_without_normalize_cut_the_raw_vectors_and_missing_quantizer_is_501(encoder, monkeypatch):
    texts = POOL[20:23]
    with running(encoder, normalize=False) as (url, _, _):
        reply = httpx.post(f"{url}/v1/embeddings", json={"input": texts, "dimensions": 16})
        assert np.abs(vectors_of(reply.json()) - encoder.encode(texts)[:, :16]).max() < 1e-5
        monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if not installed
        reply = httpx.post(f"{url}/v1/embeddings", json={"input": texts, "precision": "ubinary"})
        error = reply.json()["error"]
        assert reply.status_code == 501 and error["code"] == "precision_unavailable"
        assert "pip install sentence-transformers" in error["message"]


async def _client(url: str, seed: int, requests: int, expected: dict) -> int:
    """One client: `requests` sequential requests of 1-8 pool texts; returns how many matched."""
    rng, good = random.Random(seed), 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(requests):
            texts = rng.sample(POOL, rng.randint(1, 8))
            reply = await client.post("/v1/embeddings", json={"input": texts})
            if reply.status_code == 200:
                got = vectors_of(reply.json())
                good += int(np.abs(got - np.stack([expected[t] for t in texts])).max() < 1e-5)
    return good


def test_load_concurrent_clients_get_their_own_vectors(encoder, expected):
    with running(encoder, queue={"max_batch_size": 16}) as (url, _, service):

        async def load():
            return await asyncio.gather(*(_client(url, seed, 10, expected) for seed in range(8)))

        assert sum(asyncio.run(load())) == 80  # zero lost, zero mismatched
        assert service.metrics.value("lm2vec_requests_total", path="/v1/embeddings", status="200") == 80
        # rows were batched
        assert service.metrics.value("lm2vec_batch_size_count") < service.metrics.value("lm2vec_inputs_total")


def test_queue_merges_concurrent_requests_into_one_batch():
    seen: list[int] = []

    def embed(rows):
        seen.append(len(rows))
        time.sleep(0.2)
        return np.stack([np.full(4, len(r.ids), dtype=np.float32) for r in rows])

    from lm2vec.core.tokenization import TokenizedText

    queue = BatchQueue(embed, 4, QueueSettings(max_batch_size=8, max_wait_s=0)).start()
    first = queue.submit([TokenizedText([1, 2], 0, False)])
    time.sleep(0.05)  # the worker is now busy with `first`; the next three wait together
    rows = [[TokenizedText([1] * n, 0, False) for n in sizes] for sizes in ([3], [5, 1], [2])]
    futures = [queue.submit(r) for r in rows]
    assert queue.close(timeout=5)
    assert first.result()[0, 0] == 2
    assert [f.result()[:, 0].tolist() for f in futures] == [
        [3.0],
        [5.0, 1.0],
        [2.0],
    ]  # in each caller's order
    assert seen == [1, 4]


BAD_REQUESTS = [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    ({"model": "x"}, 400, "missing_required_parameter"),
    ({"input": ""}, 400, "empty_input"),
    ({"input": ["ok", "   "]}, 400, "empty_input"),
    ({"input": []}, 400, "invalid_input"),
    ({"input": None}, 400, "invalid_input"),
    ({"input": {"text": "x"}}, 400, "invalid_input"),
    ({"input": ["ok", 3]}, 400, "invalid_input"),
    ({"input": [1.5, 2]}, 400, "invalid_input"),
    ({"input": [[5, 6], []]}, 400, "invalid_input"),
    ({"input": [[5, 10**6]]}, 400, "invalid_token_id"),
    ({"input": [[5, -1]]}, 400, "invalid_token_id"),
    ({"input": "x", "temperature": 1}, 400, "unknown_parameter"),
    ({"input": "x", "encoding_format": "int8"}, 400, "invalid_value"),
    ({"input": "x", "dimensions": 0}, 400, "invalid_value"),
    ({"input": "x", "dimensions": 65}, 400, "invalid_value"),
    ({"input": "x", "dimensions": "8"}, 400, "invalid_value"),
    ({"input": "x", "model": 3}, 400, "invalid_value"),
    ({"input": ["x", "y"], "precision": "int4"}, 400, "invalid_value"),
    ({"input": ["x", "y"], "precision": 8}, 400, "invalid_value"),
    ({"input": "x", "precision": "int8"}, 400, "invalid_value"),  # no range from one vector
    ({"input": [[5, 6]], "instruction": "Retrieve:"}, 400, "invalid_value"),
    ({"input": ["x"] * 17}, 400, "too_many_inputs"),
    ({"input": "long " * 40}, 400, "context_length_exceeded"),
    ({"input": [list(range(5, 200))]}, 400, "context_length_exceeded"),
    ({"input": "y" * 5000}, 413, "request_too_large"),
]


def test_bad_requests_get_clean_errors_and_server_keeps_serving(encoder, expected):
    with (
        running(encoder, max_inputs=16, max_body_bytes=4096) as (url, _, _),
        httpx.Client(base_url=url) as client,
    ):
        for body, status, code in BAD_REQUESTS:
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            reply = client.post("/v1/embeddings", **kwargs)
            assert reply.status_code == status, (body, reply.text)
            error = reply.json()["error"]
            assert error["code"] == code and error["message"] and error["type"], (body, error)
        chunked = client.post("/v1/embeddings", content=iter([b'{"input": "', b"z" * 5000, b'"}']))
        assert chunked.status_code == 413  # no Content-Length: counted while streaming
        assert client.get("/v1/embeddings").status_code == 405
        missing = client.get("/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert client.get("/health").json()["status"] == "ok"
        good = client.post("/v1/embeddings", json={"input": POOL[3]})
        assert good.status_code == 200 and np.abs(vectors_of(good.json())[0] - expected[POOL[3]]).max() < 1e-5
        metrics = samples(client.get("/metrics").text)
        assert metrics[("lm2vec_errors_total", (("type", "invalid_input"),))] >= 1
        assert metrics[("lm2vec_requests_total", (("path", "/v1/embeddings"), ("status", "400")))] >= 1
        assert metrics[("lm2vec_requests_total", (("path", "/v1/embeddings"), ("status", "405")))] == 1
        assert metrics[("lm2vec_requests_total", (("path", "unmatched"), ("status", "404")))] == 1


def test_truncate_setting_accepts_long_inputs_like_encode(encoder):
    text = "long " * 40
    with running(encoder, truncate=True) as (url, _, _):
        reply = httpx.post(f"{url}/v1/embeddings", json={"input": text})
    assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] == 128
    with pytest.warns(UserWarning, match="truncated"):
        want = encoder.encode([text], normalize=True)[0]
    assert np.abs(vectors_of(reply.json())[0] - want).max() < 1e-5


def test_metrics_and_health(encoder):
    with running(encoder) as (url, _, _):
        httpx.post(f"{url}/v1/embeddings", json={"input": POOL[:3]})
        text = httpx.get(f"{url}/metrics").text
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "model": "tiny", "queue_depth": 0}
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "tiny"
    metrics = samples(text)
    assert metrics[("lm2vec_requests_total", (("path", "/v1/embeddings"), ("status", "200")))] == 1
    assert metrics[("lm2vec_inputs_total", ())] == 3
    assert metrics[("lm2vec_queue_depth", ())] == 0
    assert metrics[("lm2vec_batch_size_bucket", (("le", "4.0"),))] == 1  # one batch of 3 rows
    assert metrics[("lm2vec_request_seconds_bucket", (("le", "+Inf"),))] == 1
    assert ("lm2vec_requests_in_flight", ()) in metrics


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """A Prometheus exposition as {(sample name, sorted labels): value}, read by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_api_key_is_required_when_set(encoder):
    with running(encoder, api_key="s3cret") as (url, _, _):
        def post(headers):
            return httpx.post(f"{url}/v1/embeddings", json={"input": "hi"}, headers=headers)
        assert post({}).status_code == 401
        denied = post({"Authorization": "Bearer wrong"})
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
        assert post({"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200  # probes need no key


def test_queue_full_gives_503_with_retry_after():
    entered = threading.Event()
    encoder = slow(tiny_encoder(), 1.5, entered)
    settings = {"max_inputs": 4, "queue": {"max_queue_inputs": 4, "max_wait_s": 0}}
    with running(encoder, **settings) as (url, _, service):

        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                body = {"input": ["a b", "c d", "e f", "g h"]}
                first = asyncio.create_task(client.post("/v1/embeddings", json=body))
                await _until(entered.is_set)  # the worker is busy with the first request
                second = asyncio.create_task(client.post("/v1/embeddings", json=body))
                await _until(lambda: service.queue.depth == 4)  # queue now full
                third = await client.post("/v1/embeddings", json={"input": "one more"})
                return third, await first, await second

        third, first, second = asyncio.run(scenario())
    assert third.status_code == 503 and third.headers["retry-after"] == "1"
    assert third.json()["error"]["code"] == "queue_full"
    assert first.status_code == second.status_code == 200


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_request_timeout_gives_504_and_server_recovers():
    encoder = slow(tiny_encoder(), 0.5)
    with running(encoder, request_timeout_s=0.1) as (url, _, _):
        reply = httpx.post(f"{url}/v1/embeddings", json={"input": "too slow"})
        assert reply.status_code == 504 and reply.json()["error"]["code"] == "timeout"
        assert httpx.get(f"{url}/health").status_code == 200


def test_client_disconnect_does_not_break_the_batch_for_others(expected):
    encoder = slow(tiny_encoder(max_length=128), 0.3)
    with running(encoder, queue={"max_wait_s": 0.05}) as (url, _, service):
        port = int(url.rsplit(":", 1)[1])

        async def scenario():
            others = [asyncio.create_task(_client(url, seed, 2, expected)) for seed in range(4)]
            for _ in range(3):  # clients that send a request and hang up while it is being embedded
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                body = json.dumps({"input": POOL[:4]}).encode()
                writer.write(
                    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.close()
            return await asyncio.gather(*others)

        assert sum(asyncio.run(scenario())) == 8
        assert asyncio.run(_client(url, 99, 2, expected)) == 2
        assert service.metrics.value("lm2vec_requests_total", path="/v1/embeddings", status="500") == 0


def test_graceful_shutdown_answers_every_accepted_request(expected):
    encoder = slow(tiny_encoder(max_length=128), 0.2)
    with running(encoder, queue={"max_batch_size": 4}) as (url, server, service):

        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                tasks = [
                    asyncio.create_task(client.post("/v1/embeddings", json={"input": POOL[i : i + 3]}))
                    for i in range(12)
                ]
                await _until(lambda: service.in_flight == 12)
                server.should_exit = True  # what uvicorn's SIGTERM/SIGINT handler does
                return await asyncio.gather(*tasks)

        replies = asyncio.run(scenario())
    assert [r.status_code for r in replies] == [200] * 12
    for i, reply in enumerate(replies):
        want = np.stack([expected[t] for t in POOL[i : i + 3]])
        assert np.abs(vectors_of(reply.json()) - want).max() < 1e-5
    assert service.queue.closed and service.queue.depth == 0
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/v1/embeddings", json={"input": "after"})


def test_cli_serve_answers_then_exits_on_sigterm(tmp_path, expected):
    model_dir = tiny_encoder(max_length=128).save_pretrained(tmp_path / "tiny")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "LM2VEC_API_KEY": "k"}
    command = [
        sys.executable,
        "-m",
        "lm2vec.cli",
        "serve",
        str(model_dir),
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        reply = _wait_for_server(f"http://127.0.0.1:{port}", process)
        body = {"input": POOL[:2], "model": "tiny"}
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/embeddings", json=body, headers={"Authorization": "Bearer k"}
        )
        assert reply.status_code == 200
        assert np.abs(vectors_of(reply.json()) - np.stack([expected[t] for t in POOL[:2]])).max() < 1e-5
        assert reply.json()["model"] == Path(model_dir).name
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert "127.0.0.1" in output and "Finished server process" in output, output
    assert process.returncode == 0, "a handled SIGTERM is a clean exit, not 143"


def test_sigterm_drains_new_requests_get_503_until_the_socket_closes(expected):
    encoder = slow(tiny_encoder(max_length=128), 0.5)
    app = create_app(encoder, ServerSettings(model_name="tiny"))
    service, sock = app.state.service, socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = DrainingServer(uvicorn.Config(app, log_level="warning"), service, drain_s=1.5)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    async def scenario():
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            accepted = asyncio.create_task(client.post("/v1/embeddings", json={"input": POOL[:2]}))
            await _until(lambda: service.in_flight == 1)
            server.handle_exit(signal.SIGTERM, None)  # what the signal handler calls
            late = await client.post("/v1/embeddings", json={"input": POOL[2]})
            health = await client.get("/health")
            return await accepted, late, health

    accepted, late, health = asyncio.run(scenario())
    assert accepted.status_code == 200, "an accepted request is answered"
    assert np.abs(vectors_of(accepted.json()) - np.stack([expected[t] for t in POOL[:2]])).max() < 1e-5
    assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
    assert health.status_code == 503 and health.json()["status"] == "shutting_down"
    thread.join(30)
    assert not thread.is_alive(), "the server stops once the drain time is over and nothing is in flight"
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/v1/embeddings", json={"input": "after"})
    sock.close()


def _wait_for_server(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("server did not start")
