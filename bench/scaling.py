"""Scaling curves: throughput and peak memory vs sequence length and vs batch size, for encoding and
for one LoRA MNTP training step (lm2vec's real loop), each point in its own process.

    python bench/scaling.py                                  # ~8 min on 2 cores
    python bench/scaling.py --lengths 64 256 1024 --batches 1 8

Rows are consecutive Wiki1M sentences packed to exactly L tokens (no padding). Writes
bench/results/scaling-<model>-<date>.json and two PNG plots beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def encode_point(args) -> dict:
    """Median seconds of encoding `--batch` rows of exactly `--length` tokens (one warm-up pass first)."""
    import resource

    import torch
    from train_speed import DEFAULT_TEXTS, packed_rows

    from lm2vec import Encoder

    torch.set_num_threads(args.threads)
    encoder = Encoder.from_pretrained(args.model, pooling="mean", max_length=args.length)
    rows = packed_rows(encoder.tokenizer, DEFAULT_TEXTS, args.length, args.batch)
    times = []
    for _ in range(args.repeats + 1):
        began = time.perf_counter()
        encoder.encode(rows, batch_size=args.batch, show_progress=False)
        times.append(time.perf_counter() - began)
    seconds = statistics.median(times[1:])
    return {"seconds": seconds, "tokens_per_s": args.batch * args.length / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def train_point(args) -> dict:
    """Seconds per MNTP step (LoRA r16, bench/train_speed.py's worker) at `--batch` x `--length`."""
    from train_speed import DEFAULT_TEXTS, run_lm2vec

    worker = argparse.Namespace(model=args.model, objective="mntp", batch_size=args.batch, seq_len=args.length,
                                steps=args.repeats + 1, threads=args.threads, texts=DEFAULT_TEXTS, worker="lm2vec")
    result = run_lm2vec(worker)
    seconds = result["median_step_s"]
    return {"seconds": seconds, "tokens_per_s": args.batch * args.length / seconds, "peak_rss_mb": result["peak_rss_mb"]}


def point(args, kind: str, length: int, batch: int) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--model", args.model, "--length", str(length),
               "--batch", str(batch), "--threads", str(args.threads), "--repeats", str(args.repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    row = {"kind": kind, "length": length, "batch": batch}
    if done.returncode != 0:
        killed = done.returncode in (-9, 137)
        return {**row, "error": "out of memory (killed)" if killed else done.stderr[-800:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{kind:6} batch {batch:3} x {length:5} tokens: {result['seconds']:7.2f} s  "
          f"{result['tokens_per_s']:7.0f} tokens/s  {result['peak_rss_mb']:7.0f} MB", flush=True)
    return {**row, **result}


def plot(rows: list[dict], x: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in ("encode", "train"):
        points = sorted((r[x], r) for r in rows if r["kind"] == kind and "error" not in r)
        speed.plot([p[0] for p in points], [p[1]["tokens_per_s"] for p in points], marker="o", label=kind)
        memory.plot([p[0] for p in points], [p[1]["peak_rss_mb"] / 1024 for p in points], marker="o", label=kind)
    for axis, label in ((speed, "tokens / s"), (memory, "peak RSS (GiB)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel(x)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--lengths", nargs="+", type=int, default=[64, 128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16, 64])
    p.add_argument("--batch-for-lengths", type=int, default=1)
    p.add_argument("--length-for-batches", type=int, default=128)
    p.add_argument("--train-max-batch", type=int, default=16, help="largest batch for the training curve")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="timed repeats after one warm-up")
    p.add_argument("--worker", choices=["encode", "train"], help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps((encode_point if args.worker == "encode" else train_point)(args)))
        return
    by_length = [point(args, kind, n, args.batch_for_lengths) for kind in ("encode", "train") for n in args.lengths]
    by_batch = [point(args, kind, args.length_for_batches, b) for kind in ("encode", "train") for b in args.batches
                if kind == "encode" or b <= args.train_max_batch]
    date = datetime.date.today().isoformat()
    stem = HERE / "results" / f"scaling-{args.model}-{date}"
    stem.parent.mkdir(exist_ok=True)
    plot(by_length, "length", stem.with_name(stem.name + "-length.png"),
         f"{args.model}, batch {args.batch_for_lengths}, float32, {args.threads} CPU threads")
    plot(by_batch, "batch", stem.with_name(stem.name + "-batch.png"),
         f"{args.model}, {args.length_for_batches} tokens per row, float32, {args.threads} CPU threads")
    payload = {"date": date, "model": args.model, "device": f"CPU {platform.machine()}, {args.threads} threads",
               "training": "LoRA r16 MNTP step (forward, LM head at masked positions, backward, AdamW)",
               "by_length": by_length, "by_batch": by_batch}
    stem.with_name(stem.name + ".json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {stem}.json and -length.png / -batch.png")


if __name__ == "__main__":
    main()
