"""Tokenisation in `Encoder.encode`: one tokenizer call per text (lm2vec <= 2026-12-02) vs one call per list.

The texts are 2,000 real sentences (STS Benchmark train, both sides), with and without an instruction;
the tokenizer is SmolLM2's (a fast, Rust-backed tokenizer). Both ways must give identical tokens.

    python bench/tokenize_speed.py --data-dir ../shared/data       # seconds; bench/results/tokenize-*.json
"""

from __future__ import annotations

import argparse
import csv
import datetime
import time
from pathlib import Path

from transformers import AutoTokenizer

from lm2vec.core.models import resolve_model_path
from lm2vec.core.tokenization import tokenize_batch
from lm2vec.io import write_json_atomic


def real_texts(data_dir: Path, n: int) -> list[str]:
    path = data_dir / "sts" / "STSBenchmark" / "sts-train.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [text for row in rows if len(row) >= 7 for text in row[5:7]][:n]


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    texts = real_texts(args.data_dir, args.texts)
    rows = []
    for instruction in (None, "Retrieve semantically similar text:"):
        items = [(instruction, t) for t in texts]
        assert [tokenize_batch(tokenizer, [i], 512)[0] for i in items] == tokenize_batch(tokenizer, items, 512)
        per_text = best_of(lambda items=items: [tokenize_batch(tokenizer, [i], 512) for i in items])
        batched = best_of(lambda items=items: tokenize_batch(tokenizer, items, 512))
        rows.append({"instruction": instruction, "texts": len(items), "per_text_s": per_text, "batched_s": batched,
                     "per_text_texts_per_s": len(items) / per_text, "batched_texts_per_s": len(items) / batched,
                     "speedup": per_text / batched})
    print("| instruction | per text (texts/s) | one call (texts/s) | speed-up |\n|---|---|---|---|")
    for r in rows:
        print(f"| {'yes' if r['instruction'] else 'no'} | {r['per_text_texts_per_s']:.0f} | "
              f"{r['batched_texts_per_s']:.0f} | {r['speedup']:.2f}x |")
    date = datetime.date.today().isoformat()
    write_json_atomic(args.results / f"tokenize-{args.model}-{date}.json",
                      {"date": date, "model": args.model, "device": "CPU (2 threads)", "rows": rows})


if __name__ == "__main__":
    main()
