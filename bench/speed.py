"""Encoding speed and memory: lm2vec vs the original llm2vec 0.2.3 vs a plain transformers loop vs the
CPU's own float32 matmul rate, side by side in one run (ratios), plus training steps (bench/train_speed.py).

    python bench/speed.py                      # GEMM, encode, fast paths, training: ~15 min on 2 cores
    python bench/speed.py --sections encode gemm

Texts: 2,000 real texts of mixed length from the local data pack (STSBenchmark, Banking77, Emotion,
SciFact claims and abstracts), or the built-in Wikipedia corpus without it. Every measurement runs
in its own process (peak RSS is its own), float32, the same weights, texts, batch size, max length
and mean pooling. Writes bench/results/speed-<model>-<date>.json.
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
sys.path.insert(0, str(HERE))


# ---- inputs ------------------------------------------------------------------------------------
def _column(path: Path, index: int, delimiter: str = ",", header: bool = True) -> list[str]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else 0))
    return [r[index] for r in rows[1 if header else 0:] if len(r) > index and r[index].strip()]


def mixed_texts(data_dir: Path, n: int, seed: int = 0) -> tuple[list[str], dict[str, int]]:
    """n texts: short STS/intent/emotion sentences and long SciFact abstracts, shuffled (fixed seed)."""
    sources = {
        "STSBenchmark": lambda: list(dict.fromkeys(_column(data_dir / "sts/STSBenchmark/sts-test.csv", 5, "\t", False))),
        "Banking77": lambda: _column(data_dir / "classification/Banking77/test.csv", 0),
        "Emotion": lambda: [line.rsplit(";", 1)[0] for line in
                            (data_dir / "classification/Emotion/test.txt").read_text(encoding="utf-8").splitlines()],
        "SciFact claims": lambda: _column(data_dir / "retrieval/SciFact/claims_test.csv", 1),
        "SciFact abstracts": lambda: [" ".join(ast.literal_eval(a)) for a in
                                      _column(data_dir / "retrieval/SciFact/corpus_train.csv", 2)],
    }
    shares = {"STSBenchmark": 0.3, "Banking77": 0.25, "Emotion": 0.25, "SciFact claims": 0.1, "SciFact abstracts": 0.1}
    rng, texts, counts = random.Random(seed), [], {}
    try:
        for name, load in sources.items():
            pool = load()
            take = rng.sample(pool, min(len(pool), round(shares[name] * n)))
            texts += take
            counts[name] = len(take)
    except OSError:
        from lm2vec.data.builtin import builtin_corpus

        texts = builtin_corpus("wiki-leads", unit="paragraph")[:n]  # lead paragraphs: mixed lengths
        counts = {"builtin:wiki-leads paragraphs": len(texts)}
    rng.shuffle(texts)
    return texts[:n], counts


# ---- workers (each in its own process) ---------------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_flops(config, batches: list[tuple[int, int]]) -> float:
    """Matmul FLOPs of a forward pass over (rows, padded length) batches: 2 x linear weights per token,
    plus the attention scores and mixing (4 x length x q width per token per layer)."""
    d, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q_width, kv_width = config.num_attention_heads * head, config.num_key_value_heads * head
    linear = d * q_width + 2 * d * kv_width + q_width * d + 3 * d * inter
    return float(sum(rows * length * layers * (2 * linear + 4 * length * q_width) for rows, length in batches))


def worker_lm2vec(args, texts: list[str]) -> dict:
    import torch

    from lm2vec import Encoder
    from lm2vec.core.batching import plan_batches

    torch.set_num_threads(args.threads)
    encoder = Encoder.from_pretrained(args.model, pooling="mean", max_length=args.max_length, dtype=args.dtype)
    batch_size, budget = (args.batch_size, None) if args.worker == "lm2vec" else (args.budget_rows, args.budget_tokens)
    began = time.perf_counter()
    vectors = encoder.encode(texts, batch_size=batch_size, max_tokens=budget, show_progress=False)
    wall = time.perf_counter() - began
    lengths = [len(t.ids) for t in encoder.tokenize([(None, t) for t in texts])]
    batches = [(len(b), max(lengths[i] for i in b)) for b in plan_batches(lengths, batch_size, budget)]
    result = {"vectors": vectors, "wall_s": wall, "tokens": sum(lengths), "padded_tokens": sum(r * n for r, n in batches),
              "flops": model_flops(encoder.model.config, batches), "batches": len(batches)}
    if args.sts:  # the quality side of a fast path: STSBenchmark Spearman of cosine on 500 test pairs
        from scipy.stats import spearmanr

        left, right, gold = sts_pairs(args.data_dir)
        a, b = encoder.encode(left, batch_size=64), encoder.encode(right, batch_size=64)
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        result["stsb_spearman"] = 100 * float(spearmanr(cosine, gold).statistic)
    return result


def worker_transformers(args, texts: list[str]) -> dict:
    """The floor: AutoModel forward + mean pooling, length-sorted batches, nothing else."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from lm2vec.core.models import resolve_model_path

    torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out, tokens, batches = np.empty((len(texts), model.config.hidden_size), np.float32), 0, []
    began = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(order), args.batch_size):
            rows = order[start:start + args.batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=args.max_length,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out[rows] = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
            tokens += int(batch["attention_mask"].sum())
            batches.append(tuple(batch["input_ids"].shape))
    return {"vectors": out, "wall_s": time.perf_counter() - began, "tokens": tokens,
            "padded_tokens": sum(r * n for r, n in batches), "flops": model_flops(model.config, batches)}


def worker_gemm(args) -> dict:
    """float32 matmul rate at the model's linear shapes, M = rows x length of a typical batch."""
    import torch
    from transformers import AutoConfig

    from lm2vec.core.models import resolve_model_path

    torch.set_num_threads(args.threads)
    config = AutoConfig.from_pretrained(resolve_model_path(args.model))
    d, inter = config.hidden_size, config.intermediate_size
    head = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv = config.num_attention_heads * head, config.num_key_value_heads * head
    shapes = [(d, q), (d, kv), (d, kv), (q, d), (d, inter), (d, inter), (inter, d)]  # (in, out) per layer
    rates = {}
    for m in (512, 2048):
        x = {k: torch.randn(m, k) for k in {s[0] for s in shapes}}
        weights = [torch.randn(n, k) for k, n in shapes]
        for _ in range(3):
            for (k, _n), w in zip(shapes, weights):
                torch.nn.functional.linear(x[k], w)
        repeats, began = 20, time.perf_counter()
        for _ in range(repeats):
            for (k, _n), w in zip(shapes, weights):
                torch.nn.functional.linear(x[k], w)
        seconds = time.perf_counter() - began
        rates[m] = repeats * sum(2 * m * k * n for k, n in shapes) / seconds
    return {"gflops_by_m": {str(m): r / 1e9 for m, r in rates.items()}, "gflops": max(rates.values()) / 1e9}


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")


def worker_profile(args, texts: list[str]) -> dict:
    """torch.profiler over lm2vec encode: where the time goes, by operator (self CPU time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from lm2vec import Encoder

    torch.set_num_threads(args.threads)
    encoder = Encoder.from_pretrained(args.model, pooling="mean", max_length=args.max_length)
    encoder.encode(texts[:32], batch_size=args.batch_size, show_progress=False)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        vectors = encoder.encode(texts, batch_size=args.batch_size, show_progress=False)
    ops = sorted(((e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()), key=lambda kv: -kv[1])
    total = sum(seconds for _, seconds in ops)
    sdpa = sum(t for k, t in ops if "scaled_dot_product" in k or "flash_attention" in k)
    gemm = sum(t for k, t in ops if k in GEMM_OPS)
    return {"vectors": vectors, "self_cpu_s": total, "share_gemm": gemm / total, "share_attention_kernel": sdpa / total,
            "top_ops": [{"op": k, "seconds": round(t, 3), "share": round(t / total, 4)} for k, t in ops[:15]]}


def sts_pairs(data_dir: Path, n: int = 500) -> tuple[list[str], list[str], list[float]]:
    with open(data_dir / "sts/STSBenchmark/sts-test.csv", encoding="utf-8") as handle:
        rows = [r for r in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 7][:n]
    return [r[5] for r in rows], [r[6] for r in rows], [float(r[4]) for r in rows]


def run_worker(args) -> None:
    if args.worker == "gemm":
        result = worker_gemm(args)
    else:
        texts = json.loads(Path(args.texts_file).read_text())
        workers = {"transformers": worker_transformers, "profile": worker_profile}
        result = workers.get(args.worker, worker_lm2vec)(args, texts)
        np.save(args.vectors, result.pop("vectors"))
        if args.worker == "profile":
            print(json.dumps(result))
            return
        result["tokens_per_s"] = result["tokens"] / result["wall_s"]
        result["texts_per_s"] = len(texts) / result["wall_s"]
        if "flops" in result:
            result["gflops"] = result["flops"] / result["wall_s"] / 1e9
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


# ---- orchestration -----------------------------------------------------------------------------
def run_json(command: list[str]) -> dict:
    """Run a worker process: its last stdout line is its JSON result; a failure gives {"error": exit status
    and the end of stderr} (a crash in native code leaves no traceback, only the status)."""
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        return {"error": f"exit status {done.returncode}\n{done.stderr[-3000:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def spawn(args, worker: str, texts_file: Path, vectors: Path, *extra: str) -> dict:
    command = [sys.executable, __file__, "--worker", worker, "--texts-file", str(texts_file), "--vectors", str(vectors),
               "--model", args.model, "--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
               "--budget-rows", str(args.budget_rows), "--budget-tokens", str(args.budget_tokens),
               "--threads", str(args.threads), "--data-dir", str(args.data_dir), *extra]
    result = run_json(command)
    if "error" in result:
        raise RuntimeError(f"{worker} failed: {result['error']}")
    return result


def spawn_llm2vec(args, texts_file: Path, vectors: Path) -> dict:
    """llm2vec 0.2.3's own LLM2Vec.from_pretrained + encode, in its own environment (transformers 4.44)."""
    from llm2vec_compat import prepare_for_llm2vec, run_reference

    from lm2vec.core.models import resolve_model_path

    prepared = Path(tempfile.gettempdir()) / f"lm2vec-bench-{args.model}-for-llm2vec"
    prepare_for_llm2vec(resolve_model_path(args.model), prepared)
    jsonl = texts_file.with_suffix(".jsonl")
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in json.loads(texts_file.read_text())))
    done = run_reference(["bench/llm2vec_ref_encode.py", "--model-dir", str(prepared), "--input", str(jsonl),
                          "--output", str(vectors), "--pooling", "mean", "--max-length", str(args.max_length),
                          "--batch-size", str(args.batch_size), "--threads", str(args.threads)])
    if done.returncode != 0:
        raise RuntimeError(f"llm2vec failed:\n{done.stderr[-3000:]}")
    return json.loads(vectors.with_suffix(".json").read_text())


def result_suffix(parser: argparse.ArgumentParser, tag: str, limit: int | None) -> str:
    """'-<tag>[-limit<N>]' for a result's file name; a tag that cannot be part of one is refused before the run."""
    if tag and not re.fullmatch(r"[\w.-]+", tag):
        parser.error(f"--tag {tag!r}: use letters, digits, '.', '_' or '-' (it becomes part of a file name)")
    return (f"-{tag}" if tag else "") + (f"-limit{limit}" if limit else "")


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    c = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"min": float(c.min()), "mean": float(c.mean())}


def encode_section(args, texts: list[str], tmp: Path) -> dict:
    """Every side in turn, each alone on the machine, same texts and settings."""
    texts_file = tmp / "texts.json"
    texts_file.write_text(json.dumps(texts))
    rows = {
        "lm2vec (batch 32)": spawn(args, "lm2vec", texts_file, tmp / "ours.npy"),
        "llm2vec 0.2.3 (batch 32)": spawn_llm2vec(args, texts_file, tmp / "llm2vec.npy"),
        "plain transformers loop (batch 32)": spawn(args, "transformers", texts_file, tmp / "hf.npy"),
        f"lm2vec token budget ({args.budget_tokens} tokens)": spawn(args, "lm2vec-budget", texts_file, tmp / "budget.npy"),
    }
    subset = tmp / "profile.json"
    subset.write_text(json.dumps(texts[: args.fast_path_texts]))
    profile = spawn(args, "profile", subset, tmp / "profile.npy")
    print(f"profile of lm2vec encode ({args.fast_path_texts} texts): {100 * profile['share_gemm']:.0f}% of CPU time in "
          f"matmul ops, {100 * profile['share_attention_kernel']:.0f}% in the attention kernel; top: "
          + ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in profile["top_ops"][:6]), flush=True)
    rows["profile"] = profile
    ours = np.load(tmp / "ours.npy")
    # (the plain loop is causal AutoModel: the same compute, not the same vectors, so no cosine for it)
    for name, file in (("llm2vec 0.2.3 (batch 32)", "llm2vec.npy"), (f"lm2vec token budget ({args.budget_tokens} tokens)", "budget.npy")):
        rows[name]["cosine_to_lm2vec"] = cosines(ours, np.load(tmp / file))
    return rows


def fast_path_section(args, texts: list[str], tmp: Path) -> dict:
    """bfloat16 on CPU vs float32 on the same (fewer) texts: speed, cosine and STSBenchmark change."""
    texts_file = tmp / "fast.json"
    texts_file.write_text(json.dumps(texts[: args.fast_path_texts]))
    sts = ["--sts"] if (args.data_dir / "sts/STSBenchmark/sts-test.csv").is_file() else []
    rows = {"lm2vec float32": spawn(args, "lm2vec", texts_file, tmp / "f32.npy", *sts),
            "lm2vec bfloat16": spawn(args, "lm2vec", texts_file, tmp / "bf16.npy", "--dtype", "bfloat16", *sts)}
    rows["lm2vec bfloat16"]["cosine_to_float32"] = cosines(np.load(tmp / "f32.npy"), np.load(tmp / "bf16.npy"))
    rows["lm2vec bfloat16"]["speedup"] = rows["lm2vec bfloat16"]["tokens_per_s"] / rows["lm2vec float32"]["tokens_per_s"]
    fast, exact = rows["lm2vec bfloat16"], rows["lm2vec float32"]
    sts_text = "STSBenchmark not available"
    if sts:
        fast["stsb_change"] = fast["stsb_spearman"] - exact["stsb_spearman"]
        sts_text = f"STSBenchmark (500 pairs) {exact['stsb_spearman']:.2f} -> {fast['stsb_spearman']:.2f}"
    print(f"bfloat16 on CPU: {fast['speedup']:.2f}x float32 tokens/s, min cosine "
          f"{fast['cosine_to_float32']['min']:.4f}, {sts_text}", flush=True)
    return rows


def train_section(args) -> list[dict]:
    """bench/train_speed.py for each (model, objectives, reference) and its JSON rows."""
    runs = [(args.model, ["mntp", "simcse"], "llm2vec"), ("gemma3-270m", ["mntp"], "full-vocab")]
    rows = []
    for model, objectives, reference in runs:
        command = [sys.executable, str(HERE / "train_speed.py"), "--model", model, "--objectives", *objectives,
                   "--batch-size", str(args.train_batch), "--seq-len", str(args.train_len), "--steps", str(args.train_steps),
                   "--threads", str(args.threads), "--reference", reference]
        done = subprocess.run(command, capture_output=True, text=True)
        print(done.stdout[-1500:], flush=True)
        if done.returncode != 0:
            rows.append({"model": model, "error": done.stderr[-2000:]})
            continue
        result = json.loads((HERE / "results" / f"train-speed-{model}-{datetime.date.today()}.json").read_text())
        rows += [{"model": model, "reference": reference, **row} for row in result["rows"]]
    return rows


def print_encode(rows: dict, gemm: dict | None) -> None:
    base = rows.get("llm2vec 0.2.3 (batch 32)", {})
    print(f"{'encode':38} {'tokens/s':>9} {'texts/s':>8} {'vs llm2vec':>10} {'GFLOP/s':>8} {'of GEMM':>8} "
          f"{'peak MB':>8} {'min cos':>8}")
    for name, row in rows.items():
        if "tokens_per_s" not in row:
            continue
        ratio = row["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        of_gemm = row["gflops"] / gemm["gflops"] if gemm and "gflops" in row else None
        cos = row.get("cosine_to_lm2vec", {}).get("min")
        ratio = ratio if name != "llm2vec 0.2.3 (batch 32)" else 1.0
        print(f"{name:38} {row['tokens_per_s']:9.0f} {row['texts_per_s']:8.1f} {ratio:9.2f}x "
              f"{row.get('gflops', float('nan')):8.1f} {'' if of_gemm is None else f'{100 * of_gemm:.0f}%':>8} "
              f"{row.get('peak_rss_mb', float('nan')):8.0f} {'' if cos is None else f'{cos:.5f}':>8}")
        if of_gemm is not None:
            row["fraction_of_gemm_rate"] = of_gemm
        if base:
            row["tokens_per_s_vs_llm2vec"] = ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sections", nargs="+", default=["gemm", "encode", "fast-paths", "train"],
                   choices=["gemm", "encode", "fast-paths", "train"])
    p.add_argument("--fast-path-texts", type=int, default=400)
    p.add_argument("--n-texts", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--budget-rows", type=int, default=128, help="row cap of the token-budget run")
    p.add_argument("--budget-tokens", type=int, default=4096, help="padded-token cap of the token-budget run")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-len", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=DATA)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--texts-file", help=argparse.SUPPRESS)
    p.add_argument("--vectors", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--sts", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return run_worker(args)
    texts, counts = mixed_texts(args.data_dir, args.n_texts)
    payload = {"date": datetime.date.today().isoformat(), "model": args.model, "texts": counts,
               "device": f"CPU {platform.machine()}, {args.threads} threads (torch.set_num_threads)",
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                            if k not in ("worker", "texts_file", "vectors", "dtype", "sts")}}
    with tempfile.TemporaryDirectory() as tmp:
        if "gemm" in args.sections:
            payload["gemm"] = spawn(args, "gemm", Path(tmp) / "none.json", Path(tmp) / "none.npy")
            print(f"float32 matmul at the model's shapes: {payload['gemm']['gflops']:.1f} GFLOP/s", flush=True)
        if "encode" in args.sections:
            payload["encode"] = encode_section(args, texts, Path(tmp))
            print_encode(payload["encode"], payload.get("gemm"))
        if "fast-paths" in args.sections:
            payload["fast_paths"] = fast_path_section(args, texts, Path(tmp))
    if "train" in args.sections:
        payload["train"] = train_section(args)
    out = HERE / "results" / f"speed-{args.model}-{payload['date']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
