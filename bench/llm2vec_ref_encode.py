"""Encode texts with the ORIGINAL llm2vec 0.2.3, as a reference for lm2vec's vectors and speed.

Runs under the reference venv (/tmp/llm2vec-ref, see bench/llm2vec_compat.py), not lm2vec's venv.
The model directory must be readable by transformers 4.44 (use ``llm2vec_compat.py SRC DST``).

    /tmp/llm2vec-ref/bin/python bench/llm2vec_ref_encode.py --model-dir /tmp/smol-prepared \
        --input texts.txt --output out.npy [--instruction "Retrieve ..."]

Writes OUT.npy (float32, one row per input line, input order) and OUT.json (timing, tokens, RSS).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from llm2vec import LLM2Vec


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--input", required=True, help='.txt (one text per line) or .jsonl with "text"')
    p.add_argument("--output", required=True, help="output .npy; a .json with stats goes beside it")
    p.add_argument("--pooling", default="mean", choices=["mean", "weighted_mean", "eos_token", "last_token"])
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--instruction", default=None, help="llm2vec query instruction (not pooled over)")
    return p.parse_args(argv)


def read_texts(path: str) -> list[str]:
    """One text per non-empty line of a .txt, or the "text" field of each .jsonl record."""
    lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.endswith(".jsonl"):
        return [json.loads(ln)["text"] for ln in lines]
    return lines


def count_tokens(model: LLM2Vec, inputs: list) -> int:
    """Tokens the model actually processes (instruction included), tokenized as llm2vec does."""
    texts = [model._convert_to_str(instr, text) for instr, text in inputs]
    feats = model.tokenize([model.prepare_for_tokenization(t) for t in texts])
    return int(feats["attention_mask"].sum())


def encode(args: argparse.Namespace) -> dict:
    """Load with llm2vec's own from_pretrained, encode, and return vectors plus statistics."""
    torch.set_num_threads(args.threads)
    t_load = time.perf_counter()
    model = LLM2Vec.from_pretrained(args.model_dir, enable_bidirectional=True,
                                    pooling_mode=args.pooling, max_length=args.max_length,
                                    torch_dtype=torch.float32)
    load_s = time.perf_counter() - t_load
    texts = read_texts(args.input)
    # llm2vec.encode wraps a plain string as ["", text]; an instruction goes in the first slot.
    inputs = [[args.instruction or "", t] for t in texts]
    t0, c0 = time.perf_counter(), time.process_time()
    vectors = model.encode(inputs, batch_size=args.batch_size, show_progress_bar=False,
                           convert_to_numpy=True)
    wall = time.perf_counter() - t0
    cpu_per_wall = (time.process_time() - c0) / wall  # well below --threads: cores were shared
    tokens = count_tokens(model, inputs)
    stats = {"n_texts": len(texts), "model_class": type(model.model).__name__,
             "attn_implementation": model.model.config._attn_implementation,
             "load_s": round(load_s, 3), "wall_s": round(wall, 3), "tokens": tokens,
             "tokens_per_s": round(tokens / wall, 1), "texts_per_s": round(len(texts) / wall, 2),
             "cpu_per_wall": round(cpu_per_wall, 2),
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             "torch": torch.__version__, "threads": args.threads, **{k: v for k, v in vars(args).items()
                                                                     if k not in ("threads",)}}
    return {"vectors": np.asarray(vectors, dtype=np.float32), "stats": stats}


def main(argv=None) -> None:
    args = parse_args(argv)
    result = encode(args)
    out = Path(args.output)
    np.save(out, result["vectors"])
    out.with_suffix(".json").write_text(json.dumps(result["stats"], indent=2) + "\n")
    print(json.dumps(result["stats"], indent=2))


if __name__ == "__main__":
    main()
