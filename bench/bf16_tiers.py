"""Which texts and which layers bf16 matmuls move: the measurement behind `bf16-adaptive`'s tiers.

    python bench/bf16_tiers.py --model runs/e2e/unsup/encoder --tag trained     # ~25 min on one core
    python bench/bf16_tiers.py --limit 40                                       # a quick check

Held-out texts (STS-B, Banking77 and Emotion *train* splits, SciFact train claims: none of them is in
bench/cpu_fast.py's 2,000 test-split texts), each encoded alone (no padding) in float32 and with bf16
matmuls (core/compute.py's BF16Linear) in every decoder layer except a float32 set: the first k layers
(--leading) or named sets of layers (--sets, e.g. 11 or 0-3,11). Reports per text length bucket the
min cosine to float32 and how many texts fall below 0.99. Writes bench/results/bf16-tiers[-tag]-<date>.json;
--rows keeps the per-text cosines (and resumes from them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import DATA, _column, result_suffix  # noqa: E402

from lm2vec.io import write_json_atomic  # noqa: E402

SHARES = {"sts-train": 400, "banking-train": 300, "emotion-train": 300, "scifact-claims-train": 200}
BUCKETS = ((0, 8), (8, 12), (12, 16), (16, 24), (24, 32), (32, 10**6))


def held_out_texts(data_dir: Path, n: int) -> list[str]:
    pools = {"sts-train": lambda: list(dict.fromkeys(_column(data_dir / "sts/STSBenchmark/sts-train.csv", 5, "\t", False))),
             "banking-train": lambda: _column(data_dir / "classification/Banking77/train.csv", 0),
             "emotion-train": lambda: [line.rsplit(";", 1)[0] for line in
                                       (data_dir / "classification/Emotion/train.txt").read_text().splitlines()],
             "scifact-claims-train": lambda: _column(data_dir / "retrieval/SciFact/claims_train.csv", 1)}
    rng = random.Random(1)
    texts = [t for name, count in SHARES.items() for t in rng.sample(pools[name](), count)]
    return texts[:: max(1, len(texts) // n)][:n] if n < len(texts) else texts


def layer_set(spec: str) -> set[int]:
    """'0-3,11' -> {0, 1, 2, 3, 11}"""
    out = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out |= set(range(int(lo), int(hi or lo) + 1))
    return out


def bf16_except(encoder, keep: set[int]):
    from torch import nn

    from lm2vec.core.compute import BF16Linear, LastCast, decoder_layers

    cache = LastCast()
    for index, layer in enumerate(decoder_layers(encoder.model)):
        if index in keep:
            continue
        for name, linear in [(n, m) for n, m in layer.named_modules() if type(m) is nn.Linear]:
            parent, _, child = name.rpartition(".")
            setattr(layer.get_submodule(parent), child, BF16Linear(linear, cache))
    return encoder


def per_text_cosines(args, texts: list[str], variants: dict[str, set[int]]) -> list[dict]:
    import torch

    from lm2vec import Encoder

    torch.set_num_threads(args.threads)
    load = lambda: Encoder.from_pretrained(args.model, pooling="mean", max_length=256, dtype="float32", device="cpu")  # noqa: E731
    encoders = {"float32": load(), **{name: bf16_except(load(), keep) for name, keep in variants.items()}}
    tokenized = encoders["float32"].tokenize([(None, t) for t in texts])
    rows, began = [], time.perf_counter()
    with torch.inference_mode():
        for i, tokens in enumerate(tokenized):
            vectors = {name: e.embed(e.collate([tokens]))[0].numpy() for name, e in encoders.items()}
            unit = vectors["float32"] / np.linalg.norm(vectors["float32"])
            rows.append({"text": texts[i], "tokens": len(tokens.ids),
                         **{name: float(vectors[name] @ unit / np.linalg.norm(vectors[name])) for name in variants}})
            if i % 100 == 0:
                print(f"{i}/{len(texts)} texts, {time.perf_counter() - began:.0f} s", flush=True)
    return rows


def summary(rows: list[dict], variants) -> dict:
    tokens = np.array([r["tokens"] for r in rows])
    out = {}
    for name in variants:
        cos = np.array([r[name] for r in rows])
        buckets = {f"{lo + 1}-{hi}" if hi < 10**6 else f">{lo}": {"texts": int(s.sum()), "min": float(cos[s].min()),
                                                                   "below_0.99": int((cos[s] < 0.99).sum())}
                   for lo, hi in BUCKETS if (s := (tokens > lo) & (tokens <= hi)).any()}
        out[name] = {"min": float(cos.min()), "mean": float(cos.mean()), "below_0.99": int((cos < 0.99).sum()),
                     "by_tokens": buckets}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tag", default="")
    p.add_argument("--texts", type=int, default=1200)
    p.add_argument("--limit", type=int, help="first N texts only (a quick check)")
    p.add_argument("--leading", nargs="*", type=int, default=[0, 4, 8, 12, 16], help="float32 leading layers k")
    p.add_argument("--sets", nargs="*", default=[], help="float32 layer sets, e.g. 11 2,11 0-3,11")
    p.add_argument("--max-tokens", type=int, default=10**6, help="only texts up to this many tokens")
    p.add_argument("--rows", type=Path, help="per-text cosines: written, and read back instead of re-encoding")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=DATA)
    args = p.parse_args()
    variants = {**{f"first {k} float32": set(range(k)) for k in args.leading},
                **{f"layers {s} float32": layer_set(s) for s in args.sets}}
    suffix = result_suffix(p, args.tag, args.limit)  # a bad --tag fails here, before the run
    texts = held_out_texts(args.data_dir, args.texts)[: args.limit]
    if args.rows and args.rows.exists():
        rows = json.loads(args.rows.read_text())
        if missing := [name for name in variants if rows and name not in rows[0]]:
            p.error(f"--rows {args.rows} holds no cosines for {', '.join(missing)}: use another --rows file")
    else:
        rows = per_text_cosines(args, texts, variants)
        if args.rows:
            write_json_atomic(args.rows, rows)
    rows = [r for r in rows if r["tokens"] <= args.max_tokens]
    result = summary(rows, variants)
    for name, r in result.items():
        cells = " | ".join(f"{b} ({v['texts']}): {v['min']:.4f}/{v['below_0.99']}" for b, v in r["by_tokens"].items())
        print(f"{name:22} min {r['min']:.4f}, {r['below_0.99']} below 0.99 | {cells}")
    payload = {"date": datetime.date.today().isoformat(), "model": args.model, "texts": len(rows),
               "sources": SHARES, "max_tokens": args.max_tokens, "variants": result}
    out = HERE / "results" / f"bf16-tiers{suffix}-{payload['date']}.json"
    write_json_atomic(out, payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
