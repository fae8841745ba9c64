"""Training step time and peak memory: lm2vec vs the original llm2vec 0.2.3, side by side in one run.

Both sides get the same model, the same rows (consecutive Wiki1M sentences packed to exactly
--seq-len tokens, so padding plays no part), the same batch size, LoRA r=16 on the same projections,
float32 on CPU. lm2vec runs its real training loop (StageRunner); llm2vec runs its own model classes
and losses (bench/llm2vec_ref_train.py, in its own environment, see bench/llm2vec_compat.py). Each
measurement is a separate process (so peak RSS is its own), and the sides alternate per objective.

    python bench/train_speed.py --objectives mntp simcse --batch-size 16 --seq-len 128 --steps 4

`--precisions fp32 bf16` instead compares lm2vec with itself at those training precisions (same rows,
same seeds), step time and the loss of every step, and writes train-precision-<model>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_TEXTS = HERE.parents[1] / "shared" / "data" / "corpora" / "wiki1m_for_simcse" / "wiki1m_for_simcse.txt"


def packed_rows(tokenizer, path: Path, seq_len: int, count: int) -> list[str]:
    """Texts of >= seq_len tokens made of consecutive sentences (truncation then makes them exactly seq_len)."""
    lines = path.read_text(encoding="utf-8").splitlines()[:-1]  # the shard's last line is cut mid-sentence
    rows, current = [], ""
    for line in lines:
        current = f"{current} {line}".strip()
        if len(tokenizer(current, add_special_tokens=True)["input_ids"]) > seq_len:
            rows.append(current)
            current = ""
            if len(rows) == count:
                break
    return rows


def full_vocab_mntp_loss(hidden, lm_head, labels, softcap=None):
    """llm2vec's MNTP loss computation (LlamaBiForMNTP and kin): logits for EVERY position over the whole
    vocabulary, then cross-entropy with -100 on the unmasked ones. Same value as lm2vec's loss."""
    import torch
    import torch.nn.functional as F

    logits = lm_head(hidden).float()  # (B, T, V)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def run_lm2vec(args) -> dict:
    """Worker: our real training loop for --steps steps (with --worker full-vocab, llm2vec's MNTP loss
    computation swapped in, for models llm2vec 0.2.3 cannot load)."""
    import torch
    from transformers import AutoTokenizer

    from lm2vec.core.models import resolve_model_path
    from lm2vec.training.loop import StageRunner
    from lm2vec.training.recipe import Recipe, StageConfig

    torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    rows = packed_rows(AutoTokenizer.from_pretrained(path), args.texts, args.seq_len, args.batch_size * args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "rows.txt"
        corpus.write_text("\n".join(rows) + "\n")
        stage = StageConfig(objective=args.objective, data=str(corpus), max_steps=args.steps, batch_size=args.batch_size,
                            max_length=args.seq_len, save_every=10**6, warmup_steps=0, text_unit="line",
                            precision=args.precision, pack=False, lr=args.lr,
                            lora={"dropout": args.lora_dropout})
        runner = StageRunner(Recipe(stages=[stage], model=path), stage, path, Path(tmp) / "s", Path(tmp) / "e", device="cpu")
        if args.unfused:  # peft's own LoRA forward, as before training/fused_lora.py
            import lm2vec.training.loop

            lm2vec.training.loop.fuse_lora_layers = lambda model: 0
        if args.worker == "full-vocab":
            import lm2vec.training.objectives.mntp

            lm2vec.training.objectives.mntp.mntp_loss_from_hidden = full_vocab_mntp_loss
        runner.setup()
        runner.out_dir.mkdir(parents=True)
        times, losses = [], []
        for step in range(args.steps):
            import time

            began = time.perf_counter()
            losses.append(runner.train_step(step)[0])
            times.append(time.perf_counter() - began)
    return {**summarise(times), "losses": losses, "precision_used": runner.precision}


def summarise(times: list[float]) -> dict:
    timed = times[1:] or times  # the first step pays one-off costs
    return {"step_times": times, "median_step_s": statistics.median(timed), "steps_per_s": 1 / statistics.median(timed),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_reference(args, prepared: Path) -> dict:
    """Worker: llm2vec's own training path in its environment."""
    sys.path.insert(0, str(HERE))
    from llm2vec_compat import run_reference as call

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        result = call(["bench/llm2vec_ref_train.py", "--model-dir", str(prepared), "--objective", args.objective,
                       "--texts", str(args.texts), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
                       "--steps", str(args.steps), "--threads", str(args.threads), "--output", out.name])
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-2000:])
        data = json.loads(Path(out.name).read_text())
    times = data.get("step_times") or data["step_times_s"]
    return {**summarise(times), "peak_rss_mb": data.get("peak_rss_mb", data.get("peak_rss_MB"))}


def measure(side: str, objective: str, args, precision: str = "fp32") -> dict:
    """One measurement in a fresh process of this script."""
    command = [sys.executable, __file__, "--worker", side, "--objectives", objective, "--model", args.model,
               "--precision", precision, "--lr", str(args.lr), "--lora-dropout", str(args.lora_dropout),
               "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--steps", str(args.steps),
               "--threads", str(args.threads), "--texts", str(args.texts)] + (["--unfused"] if args.unfused else [])
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        return {"error": done.stderr[-1500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepared_model(model: str) -> Path:
    sys.path.insert(0, str(HERE))
    from llm2vec_compat import prepare_for_llm2vec

    from lm2vec.core.models import resolve_model_path

    target = Path(tempfile.gettempdir()) / f"lm2vec-bench-{model}-for-llm2vec"
    prepare_for_llm2vec(resolve_model_path(model), target)
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--objectives", nargs="+", default=["mntp", "simcse"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--texts", type=Path, default=DEFAULT_TEXTS)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (0.05 as LLM2Vec)")
    p.add_argument("--precisions", nargs=2, metavar=("BASELINE", "CANDIDATE"),
                   help="compare lm2vec at two training precisions (e.g. fp32 bf16) instead of against llm2vec")
    p.add_argument("--reference", choices=["llm2vec", "full-vocab"], default="llm2vec",
                   help="llm2vec: its own code in its own venv; full-vocab: lm2vec's loop with llm2vec's full-vocabulary "
                        "MNTP loss (for models llm2vec 0.2.3 cannot load, e.g. Gemma 3)")
    p.add_argument("--unfused", action="store_true", help="lm2vec with peft's own LoRA forward (no fused_lora)")
    p.add_argument("--tag", default="", help="added to the --precisions result's file name (e.g. the settings compared)")
    p.add_argument("--worker", choices=["lm2vec", "llm2vec", "full-vocab"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tag and not re.fullmatch(r"[\w.-]+", args.tag):
        p.error(f"--tag {args.tag!r}: use letters, digits, '.', '_' or '-' (it becomes part of a file name)")
    if args.worker:
        args.objective = args.objectives[0]
        result = run_reference(args, prepared_model(args.model)) if args.worker == "llm2vec" else run_lm2vec(args)
        print(json.dumps(result))
        return
    if args.precisions:
        return compare_precisions(args)
    rows = []
    for objective in args.objectives:
        ours = measure("lm2vec", objective, args)
        reference = args.reference if objective == "mntp" else "llm2vec"
        theirs = {} if args.no_reference else measure(reference, objective, args)
        rows.append({"objective": objective, "lm2vec": ours, "llm2vec": theirs, "reference": reference})
    report(args, rows)


def compare_precisions(args) -> None:
    """lm2vec at two precisions, alternating per objective: step-time ratio and loss agreement."""
    import platform

    base, cand = args.precisions
    rows = []
    print(f"{'objective':10} {base + ' s/step':>12} {cand + ' s/step':>12} {'speed-up':>9} {'max |loss diff|':>16}")
    for objective in args.objectives:
        first, second = measure("lm2vec", objective, args, base), measure("lm2vec", objective, args, cand)
        row = {"objective": objective, base: first, cand: second}
        if "error" not in first and "error" not in second:
            row["speedup"] = first["median_step_s"] / second["median_step_s"]
            row["max_abs_loss_diff"] = max(abs(a - b) for a, b in zip(first["losses"], second["losses"]))
            print(f"{objective:10} {first['median_step_s']:12.2f} {second['median_step_s']:12.2f} "
                  f"{row['speedup']:8.2f}x {row['max_abs_loss_diff']:16.4f}")
        else:
            print(objective, first.get("error", ""), second.get("error", ""))
        rows.append(row)
    date = datetime.date.today().isoformat()
    tag = f"-{args.batch_size}x{args.seq_len}" + ("" if args.lora_dropout == 0.05 else f"-lora-dropout-{args.lora_dropout:g}")
    tag += f"-{args.tag}" if args.tag else ""
    out = HERE / "results" / f"train-precision-{args.model}{tag}-{date}.json"
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "worker"}
    cpu_flags = [f for f in ("avx512_bf16", "amx_bf16") if f in Path("/proc/cpuinfo").read_text()]
    payload = {"date": date, "device": f"CPU {platform.machine()} ({', '.join(cpu_flags) or 'no bf16 units'}), "
               f"{args.threads} threads", "settings": settings, "rows": rows,
               "keep_freed_memory": os.environ.get("LM2VEC_KEEP_FREED_MEMORY", "1") != "0",
               "fused_lora": not args.unfused}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


def report(args, rows: list[dict]) -> None:
    import platform

    print(f"{'objective':10} {'lm2vec s/step':>14} {'llm2vec s/step':>15} {'speed-up':>9} {'lm2vec MB':>10} {'llm2vec MB':>11}")
    for row in rows:
        ours, theirs = row["lm2vec"], row["llm2vec"]
        if "error" in ours or "error" in theirs or not theirs:
            print(row["objective"], ours.get("error", ""), theirs.get("error", "") if theirs else "no reference")
            continue
        row["speedup"] = theirs["median_step_s"] / ours["median_step_s"]
        row["memory_ratio"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
        print(f"{row['objective']:10} {ours['median_step_s']:14.2f} {theirs['median_step_s']:15.2f} "
              f"{row['speedup']:8.2f}x {ours['peak_rss_mb']:10.0f} {theirs['peak_rss_mb']:11.0f}")
    date = datetime.date.today().isoformat()
    out = HERE / "results" / f"train-speed-{args.model}-{date}.json"
    out.parent.mkdir(exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "worker"}
    payload = {"date": date, "device": f"CPU {platform.machine()}, {args.threads} threads", "settings": settings,
               "rows": rows}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
