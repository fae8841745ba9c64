"""Vector parity with the original llm2vec 0.2.3: same weights, texts, bidirectional attention, pooling.

    python bench/parity.py --texts 300 --pooling mean

Encodes real STSBenchmark sentences with lm2vec and with llm2vec (in its own environment, see
bench/llm2vec_compat.py) and writes the per-text cosine summary to bench/results/parity-<date>.json.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STSB = HERE.parents[1] / "shared" / "data" / "sts" / "STSBenchmark" / "sts-test.csv"


def sts_texts(limit: int) -> list[str]:
    """Distinct sentences of the STSBenchmark test split, in file order."""
    with open(STSB, encoding="utf-8") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        texts = dict.fromkeys(t for r in rows for t in (r[5], r[6]))
    return list(texts)[:limit]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--texts", type=int, default=300)
    p.add_argument("--pooling", default="mean", choices=["mean", "weighted_mean"])
    p.add_argument("--max-length", type=int, default=128)
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    from llm2vec_compat import prepare_for_llm2vec, run_reference

    from lm2vec import Encoder
    from lm2vec.core.models import resolve_model_path

    texts = sts_texts(args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "texts.txt").write_text("\n".join(texts) + "\n")
        prepare_for_llm2vec(resolve_model_path(args.model), tmp / "model")
        done = run_reference(["bench/llm2vec_ref_encode.py", "--model-dir", str(tmp / "model"), "--input",
                              str(tmp / "texts.txt"), "--output", str(tmp / "ref.npy"), "--pooling", args.pooling,
                              "--max-length", str(args.max_length)])
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        theirs = np.load(tmp / "ref.npy")
    ours = Encoder.from_pretrained(args.model, pooling=args.pooling, max_length=args.max_length).encode(texts)
    cosines = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    result = {"date": datetime.date.today().isoformat(), "model": args.model, "pooling": args.pooling,
              "texts": len(texts), "max_length": args.max_length, "min_cosine": float(cosines.min()),
              "mean_cosine": float(cosines.mean()), "target": 0.999, "passed": bool(cosines.min() >= 0.999)}
    out = HERE / "results" / f"parity-{args.model}-{args.pooling}-{result['date']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
