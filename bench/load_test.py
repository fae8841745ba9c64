"""Load test for `lm2vec serve`: many concurrent clients, every answer checked, batching on vs off.

For each model a real server process (`python -m lm2vec.cli serve`) runs on 127.0.0.1 in three modes:
  batched       the default: concurrent requests merged into token-budget batches
  per_request   --no-merge-requests: each request's own texts batched, requests never merged
  unbatched     --max-batch-size 1: one text per forward pass (micro-batching disabled)
Clients send requests of 1-16 texts drawn from a fixed pool of real sentences (STSBenchmark test);
each response is compared with `Encoder.encode(pool, normalize=True)` computed beforehand, so a lost,
reordered or mixed-up vector is caught. Prints a table and writes bench/results/load-<date>.json.

    python bench/load_test.py                       # tiny model, then smollm2-135m
    python bench/load_test.py --models tiny --requests 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import datetime
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
STS_TEST = (
    Path(os.environ.get("LM2VEC_SHARED_DATA", ROOT.parent / "shared" / "data"))
    / "sts/STSBenchmark/sts-test.csv"
)
MODES = {"batched": [], "per_request": ["--no-merge-requests"], "unbatched": ["--max-batch-size", "1"]}
TOLERANCE = 1e-4  # max |difference| between unit vectors (float32, different batch compositions)


def sentence_pool(size: int) -> list[str]:
    """Unique STSBenchmark test sentences (read at run time; the data's licence forbids copying it here)."""
    seen: dict[str, None] = {}
    with open(STS_TEST, encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            for text in row[5:7]:
                if text.strip():
                    seen.setdefault(text.strip(), None)
    return list(seen)[:size]


def model_dir(name: str, workdir: Path) -> str:
    """`tiny`: the test suite's random 2-layer llama, saved; anything else is passed to lm2vec as is."""
    if name != "tiny":
        return name
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_encoder

    return str(tiny_encoder(max_length=256).save_pretrained(workdir / "tiny"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, flags: list[str]) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "lm2vec.cli",
        "serve",
        model,
        "--port",
        str(port),
        "--device",
        "cpu",
        "--max-inputs",
        "64",
        *flags,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.25)
    process.kill()
    raise RuntimeError("server did not start")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


async def client(
    url: str, seed: int, requests: int, max_texts: int, pool: list[str], expected: np.ndarray, record: dict
) -> None:
    """Sequential requests; each answer is decoded (base64, as the openai client asks) and checked."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        for _ in range(requests):
            picks = [rng.randrange(len(pool)) for _ in range(rng.randint(1, max_texts))]
            started = time.perf_counter()
            try:
                reply = await http.post(
                    "/v1/embeddings", json={"input": [pool[i] for i in picks], "encoding_format": "base64"}
                )
            except httpx.HTTPError:
                record["lost"] += 1
                continue
            record["latency"].append(time.perf_counter() - started)
            if reply.status_code != 200:
                record["errors"] += 1
                continue
            check(reply.json(), picks, expected, record)


def check(body: dict, picks: list[int], expected: np.ndarray, record: dict) -> None:
    """Count the request as matched only if every vector is its own input's, in order."""
    data = body["data"]
    if [d["index"] for d in data] != list(range(len(picks))):
        record["mismatched"] += 1
        return
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
    worst = float(np.abs(got - expected[picks]).max())
    record["worst_diff"] = max(record["worst_diff"], worst)
    record["mismatched" if worst > TOLERANCE else "matched"] += 1
    record["texts"] += len(picks)


def batch_stats(url: str) -> dict:
    """Mean rows and padded tokens per forward pass, from the server's Prometheus metrics."""
    values = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("lm2vec_batch_size_sum", "lm2vec_batch_size_count", "lm2vec_batch_tokens_sum"):
            values[name] = float(value)
    count = max(values.get("lm2vec_batch_size_count", 0), 1)
    return {
        "forward_passes": int(count),
        "mean_rows_per_pass": values.get("lm2vec_batch_size_sum", 0) / count,
        "mean_padded_tokens_per_pass": values.get("lm2vec_batch_tokens_sum", 0) / count,
    }


def run_mode(
    model: str, flags: list[str], args, requests: int, pool: list[str], expected: np.ndarray
) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(model, port, flags)
    httpx.post(
        f"{url}/v1/embeddings", json={"input": pool[:16]}, timeout=600
    )  # warm-up, not timed or counted
    record = {
        "latency": [],
        "matched": 0,
        "mismatched": 0,
        "errors": 0,
        "lost": 0,
        "texts": 0,
        "worst_diff": 0.0,
    }
    try:
        started = time.perf_counter()

        async def load():
            await asyncio.gather(
                *(
                    client(url, seed, requests, args.max_texts, pool, expected, record)
                    for seed in range(args.clients)
                )
            )

        asyncio.run(load())
        wall = time.perf_counter() - started
        stats = batch_stats(url)
    finally:
        stop_server(server)
    latency = np.array(record.pop("latency"))
    return {
        **record,
        **stats,
        "requests": args.clients * requests,
        "wall_s": round(wall, 2),
        "texts_per_s": round(record["texts"] / wall, 1),
        "requests_per_s": round(args.clients * requests / wall, 2),
        "p50_ms": round(1000 * float(np.percentile(latency, 50)), 1),
        "p99_ms": round(1000 * float(np.percentile(latency, 99)), 1),
        "server_flags": flags,
    }


def bench_model(name: str, args, workdir: Path) -> dict:
    from lm2vec import Encoder

    model = model_dir(name, workdir)
    requests = args.requests if name == "tiny" else args.real_requests
    pool = sentence_pool(args.pool)
    expected = Encoder.from_pretrained(model, device="cpu").encode(
        pool, normalize=True, batch_size=32, show_progress=False
    )
    modes = {mode: run_mode(model, flags, args, requests, pool, expected) for mode, flags in MODES.items()}
    base = modes["batched"]["texts_per_s"]
    return {
        "model": name,
        "clients": args.clients,
        "requests_per_client": requests,
        "texts_per_request": f"1-{args.max_texts}",
        "pool_sentences": len(pool),
        "modes": modes,
        "speedup_vs_unbatched": round(base / modes["unbatched"]["texts_per_s"], 2),
        "speedup_vs_per_request": round(base / modes["per_request"]["texts_per_s"], 2),
    }


def print_table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lm2vec serve load test (loopback, CPU)")
    for column in (
        "model",
        "mode",
        "requests",
        "texts",
        "lost",
        "mismatched",
        "errors",
        "p50 ms",
        "p99 ms",
        "texts/s",
        "rows/pass",
        "speedup",
    ):
        table.add_column(column, justify="left" if column in ("model", "mode") else "right")
    for result in results:
        for mode, m in result["modes"].items():
            speedup = f"{result['modes']['batched']['texts_per_s'] / m['texts_per_s']:.2f}x"
            table.add_row(
                result["model"],
                mode,
                str(m["requests"]),
                str(m["texts"]),
                str(m["lost"]),
                str(m["mismatched"]),
                str(m["errors"]),
                f"{m['p50_ms']:.0f}",
                f"{m['p99_ms']:.0f}",
                f"{m['texts_per_s']:.1f}",
                f"{m['mean_rows_per_pass']:.1f}",
                speedup,
            )
    console = Console(width=150)
    console.print(table)
    console.print("speedup: batched throughput / this mode's throughput")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50, help="requests per client (tiny model)")
    parser.add_argument("--real-requests", type=int, default=5, help="requests per client (real models, CPU)")
    parser.add_argument("--max-texts", type=int, default=16)
    parser.add_argument("--pool", type=int, default=512, help="distinct sentences requests draw from")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / f"load-{datetime.date.today()}.json"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            bench_model(name.strip(), args, Path(tmp)) for name in args.models.split(",") if name.strip()
        ]
    print_table(results)
    report = {
        "date": str(datetime.date.today()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "tolerance": TOLERANCE,
        "results": results,
        "notes": [
            (
                f"real models run {args.real_requests} requests per client instead of {args.requests} "
                "(2 CPU cores; the unbatched mode alone would take most of an hour at full count)"
            ),
            "client and server share the same CPU cores",
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
