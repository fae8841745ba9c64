"""Fast CPU inference side by side: float32, bf16, bf16-matmul, int8 and the ONNX Runtime / OpenVINO engines.

    python bench/cpu_fast.py                # 2,000 real texts, every path whose packages are installed
    python bench/cpu_fast.py --limit 40     # a quick check that every path runs (numbers meaningless)

Every path sees the same texts (bench/speed.py's mixed set: STSBenchmark, Banking77, Emotion, SciFact
claims and abstracts), lm2vec's tokenization, length-sorted batches of --batch-size, max length and mean
pooling; the engines run the backbone graph that `lm2vec export --format onnx|openvino` writes (traced
once here), with lm2vec's pooling around it. Each path runs in its own process, one after the other,
with --threads threads. Per path: tokens/s of a timed encode after a warm-up batch, its ratio to
float32, min/mean cosine of its vectors to float32's, and STSBenchmark test Spearman (cosine vs gold, the
first --sts-pairs pairs). The fast path's targets (min cosine >= 0.99, mean >= 0.999, >= 1.8x float32
tokens/s, STS within 0.3) are checked in the table. Writes bench/results/cpu-fast-<date>.json
(cpu-fast-<date>[-<tag>][-limit<N>].json with --tag / --limit).

Paths: float32 | bfloat16 (everything bf16) | bf16-matmul (lm2vec's fast mode: the first quarter of the
layers float32) | bf16-matmul-all (every layer's matmuls in bf16: faster, less exact) | bf16-adaptive (per batch
by its shortest text: up to 24 tokens the first 40% of the layers float32, else none) | int8-dynamic (torch) |
onnx (ONNX Runtime, float32) | onnx-int8 (onnxruntime.quantization.quantize_dynamic, QInt8 weights) |
openvino (OpenVINO's default precision: bf16 on AMX CPUs) | openvino-f32 | openvino-int8 (nncf
compress_weights INT8_ASYM: int8 weights, activations in OpenVINO's default precision; needs nncf).
OpenVINO 2026.4.1 crashes in bf16 with one thread (docs/serving.md): use --threads 2 or more.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import DATA, cosines, mixed_texts, result_suffix, run_json, sts_pairs  # noqa: E402

from lm2vec.io import write_json_atomic  # noqa: E402

TORCH_PATHS = {"float32": "float32", "bfloat16": "bfloat16", "bf16-matmul": "bf16-matmul",
               "bf16-matmul-all": "float32", "bf16-adaptive": "bf16-adaptive", "int8-dynamic": "int8-dynamic"}
ENGINE_PATHS = {"onnx": ("onnxruntime",), "onnx-int8": ("onnxruntime",), "openvino": ("openvino",),
                "openvino-f32": ("openvino",), "openvino-int8": ("openvino", "nncf")}
GRAPHS = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx", "openvino": "openvino_model.xml",
          "openvino-f32": "openvino_model.xml", "openvino-int8": "openvino_model-int8.xml"}
SHORT_TOKENS = 24  # the short-text timing: texts up to this many tokens
TARGETS = {"min_cosine": 0.99, "mean_cosine": 0.999, "speedup": 1.8, "sts_change": 0.3}


# ---- graphs (built once, by the orchestrator) -----------------------------------------------------
def build_graphs(args, paths: list[str], folder: Path) -> None:
    """Trace the bidirectional backbone once to ONNX, then the int8 and OpenVINO variants from that graph."""
    from lm2vec import Encoder
    from lm2vec.export.graph import trace_onnx

    encoder = Encoder.from_pretrained(args.model, pooling="mean", max_length=args.max_length, dtype="float32", device="cpu")
    began = time.perf_counter()
    onnx_path = trace_onnx(encoder.model, folder / GRAPHS["onnx"])
    print(f"traced ONNX graph in {time.perf_counter() - began:.0f} s", flush=True)
    if "onnx-int8" in paths:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(onnx_path), str(folder / GRAPHS["onnx-int8"]), weight_type=QuantType.QInt8,
                         use_external_data_format=True)
    if any(p.startswith("openvino") for p in paths):
        import openvino as ov

        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(folder / GRAPHS["openvino"]), compress_to_fp16=False)
        if "openvino-int8" in paths:
            import nncf

            compressed = nncf.compress_weights(ov.Core().read_model(str(folder / GRAPHS["openvino"])),
                                               mode=nncf.CompressWeightsMode.INT8_ASYM)
            ov.save_model(compressed, str(folder / GRAPHS["openvino-int8"]), compress_to_fp16=False)


# ---- one path (in its own process) ----------------------------------------------------------------
def make_encode(args):
    """(encoder, encode(texts) -> vectors) for args.path: a torch dtype/mode, or an engine around lm2vec's pooling."""
    import torch

    from lm2vec import Encoder
    from lm2vec.export.graph import encode_with, onnx_runner, openvino_runner

    torch.set_num_threads(args.threads)
    dtype = TORCH_PATHS.get(args.path, "float32")
    encoder = Encoder.from_pretrained(args.model, pooling="mean", max_length=args.max_length, dtype=dtype, device="cpu")
    if args.path == "bf16-matmul-all":
        encoder.use_compute_mode("bf16-matmul", float32_layers=0)
    if args.path in TORCH_PATHS:
        return encoder, lambda texts: encoder.encode(texts, batch_size=args.batch_size, show_progress=False)
    graph = Path(args.graph_dir) / GRAPHS[args.path]
    if args.path.startswith("onnx"):
        run = onnx_runner(graph, threads=args.threads)
    else:
        run = openvino_runner(graph, threads=args.threads, precision="f32" if args.path == "openvino-f32" else None)
    return encoder, lambda texts: encode_with(run, encoder, texts, batch_size=args.batch_size)


def run_path(args) -> None:
    """Time the encode of the texts, then score STSBenchmark; print the result as one JSON line."""
    from scipy.stats import spearmanr

    texts = json.loads(Path(args.texts_file).read_text())
    encoder, encode = make_encode(args)
    encode(texts[: args.batch_size])  # warm-up: first-call allocations, engine graph compilation
    began = time.perf_counter()
    vectors = encode(texts)
    wall = time.perf_counter() - began
    np.save(args.vectors, vectors)
    lengths = [len(t.ids) for t in encoder.tokenize([(None, t) for t in texts])]
    short = [t for t, n in zip(texts, lengths) if n <= SHORT_TOKENS]
    began = time.perf_counter()
    encode(short)
    short_wall = time.perf_counter() - began
    tokens = sum(lengths)
    left, right, gold = sts_pairs(args.data_dir, args.sts_pairs)
    a, b = encode(left), encode(right)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    short_tokens = sum(n for n in lengths if n <= SHORT_TOKENS)
    print(json.dumps({"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "texts_per_s": len(texts) / wall,
                      "short_texts": len(short), "short_tokens": short_tokens,
                      "short_tokens_per_s": short_tokens / short_wall,
                      "stsb_spearman": 100 * float(spearmanr(cosine, gold).statistic), "sts_pairs": len(gold)}))


# ---- orchestration ------------------------------------------------------------------------------
def available(paths: list[str]) -> tuple[list[str], dict[str, str]]:
    """The paths whose packages import here, and why the others were left out."""
    skipped = {}
    for path in paths:
        missing = [m for m in ENGINE_PATHS.get(path, ()) if importlib.util.find_spec(m) is None]
        if missing:
            skipped[path] = f"not installed: {', '.join(missing)}"
    return [p for p in paths if p not in skipped], skipped


def spawn(args, path: str, tmp: Path) -> dict:
    """One path in a fresh process of this script."""
    return run_json([sys.executable, __file__, "--path", path, "--texts-file", str(tmp / "texts.json"),
                     "--vectors", str(tmp / f"{path}.npy"), "--graph-dir", str(tmp / "graphs"), "--model", args.model,
                     "--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
                     "--threads", str(args.threads), "--data-dir", str(args.data_dir), "--sts-pairs", str(args.sts_pairs)])


def compare(rows: dict, tmp: Path) -> None:
    """Ratios, cosines and STS change against float32, and the targets for every row."""
    base = rows["float32"]
    if "error" in base:
        return
    reference = np.load(tmp / "float32.npy")
    for path, row in rows.items():
        if "error" in row:
            continue
        row["speedup"] = row["tokens_per_s"] / base["tokens_per_s"]
        row["short_speedup"] = row["short_tokens_per_s"] / base["short_tokens_per_s"]
        vectors = np.load(tmp / f"{path}.npy")
        row["cosine_to_float32"] = cosines(reference, vectors)
        per_text = (reference * vectors).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(vectors, axis=1)
        row["texts_below_min_cosine"] = int((per_text < TARGETS["min_cosine"]).sum())
        row["stsb_change"] = row["stsb_spearman"] - base["stsb_spearman"]
        row["targets_met"] = {"min_cosine": row["cosine_to_float32"]["min"] >= TARGETS["min_cosine"],
                              "mean_cosine": row["cosine_to_float32"]["mean"] >= TARGETS["mean_cosine"],
                              "speedup": row["speedup"] >= TARGETS["speedup"],
                              "sts_change": abs(row["stsb_change"]) <= TARGETS["sts_change"]}


def print_table(rows: dict, skipped: dict) -> None:
    print(f"\n{'path':15} {'tokens/s':>9} {'vs fp32':>8} {'short x':>8} {'min cos':>9} {'< 0.99':>6} {'mean cos':>9} {'STSB':>7} "
          f"{'change':>7}  targets met")
    for path, row in rows.items():
        if "error" in row:
            lines = row["error"].strip().splitlines()
            print(f"{path:15} failed: {lines[0]}: {lines[-1][:120]}")
            continue
        met = ", ".join(k for k, ok in row["targets_met"].items() if ok) or "none"
        print(f"{path:15} {row['tokens_per_s']:9.0f} {row['speedup']:7.2f}x {row['short_speedup']:7.2f}x "
              f"{row['cosine_to_float32']['min']:9.5f} {row['texts_below_min_cosine']:6d} "
              f"{row['cosine_to_float32']['mean']:9.6f} {row['stsb_spearman']:7.2f} {row['stsb_change']:+7.2f}  {met}")
    for path, why in skipped.items():
        print(f"{path:15} skipped: {why}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="a registry name, hub id or encoder folder (e.g. a trained one)")
    p.add_argument("--tag", default="", help="added to the result's file name (e.g. trained)")
    p.add_argument("--paths", nargs="+", default=[*TORCH_PATHS, *ENGINE_PATHS], choices=[*TORCH_PATHS, *ENGINE_PATHS])
    p.add_argument("--n-texts", type=int, default=2000)
    p.add_argument("--limit", type=int, help="use only the first N texts and N STS pairs (a quick check)")
    p.add_argument("--sts-pairs", type=int, default=500)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=DATA)
    for hidden in ("--path", "--texts-file", "--vectors", "--graph-dir"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.path:
        return run_path(args)
    if "float32" not in args.paths:
        p.error("--paths must include float32: every other path is compared with it")
    suffix = result_suffix(p, args.tag, args.limit)  # a bad --tag fails here, before the run
    texts, counts = mixed_texts(args.data_dir, args.n_texts)
    if args.limit:
        texts, args.sts_pairs = texts[: args.limit], min(args.sts_pairs, args.limit)
    paths, skipped = available(args.paths)
    payload = {"date": datetime.date.today().isoformat(), "model": args.model, "texts": counts, "n_texts": len(texts),
               "device": f"CPU {platform.machine()} ({platform.processor() or 'unknown'}), {args.threads} threads",
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                            if k not in ("path", "texts_file", "vectors", "graph_dir")},
               "targets": TARGETS, "skipped": skipped}
    with tempfile.TemporaryDirectory(prefix="lm2vec-cpu-fast-") as tmp:
        tmp = Path(tmp)
        (tmp / "texts.json").write_text(json.dumps(texts))
        if any(p in ENGINE_PATHS for p in paths):
            build_graphs(args, paths, tmp / "graphs")
        rows = {}
        for path in paths:
            row = rows[path] = spawn(args, path, tmp)
            print(f"{path}: {row['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in row else f"{path}: failed", flush=True)
        compare(rows, tmp)
    print_table(rows, skipped)
    payload["paths"] = rows
    out = HERE / "results" / f"cpu-fast-{payload['date']}{suffix}.json"
    write_json_atomic(out, payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
