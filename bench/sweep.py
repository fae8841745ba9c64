"""Recipe sweep on dev splits only: which settings buy the most STS Benchmark *dev* Spearman per CPU minute.

Each variant trains with `eval_every` on the dev pairs (never a test split), so every run yields a
curve of dev score against training minutes. MNTP stages are shared: variants whose MNTP settings
are equal reuse one trained MNTP encoder, and its minutes are counted in each variant's time axis.
Finished variants are kept in <work>/sweep.json, so an interrupted sweep resumes.

    python bench/sweep.py --data-dir ../shared/data                      # the CPU sweep (~1 h on 2 cores)
    python bench/sweep.py --profile smoke --model DIR --corpus F --triplets F --dev F   # seconds (tests)

Writes bench/results/sweep-<profile>-<date>.json, .md and -dev-curves.png.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

from lm2vec.io import write_json_atomic
from lm2vec.training.loop import train
from lm2vec.training.recipe import Recipe, StageConfig

# MNTP as the issue measured it (100 x 8 x 128, lr 5e-4) and SimCSE at the SimCSE paper's Wiki1M length.
MNTP = dict(objective="mntp", max_steps=100, batch_size=8, max_length=128, lr=5e-4, warmup_steps=10,
            eval_every=50, lora={"dropout": 0.0})
SIMCSE = dict(objective="simcse", max_steps=60, batch_size=32, max_length=32, lr=5e-4, warmup_steps=6,
              eval_every=10, attention_dropout=0.3)
# Supervised at SimCSE's lr: 5e-4 reached STS Benchmark dev 67.6 in 60 steps where the paper's 2e-4 reached 43.5.
# Scale 20 (SimCSE's), not llm2vec's supervised 50: the CPU rows were measured with it (2026-12-01/02).
SUPERVISED = dict(objective="supervised", max_steps=60, batch_size=16, max_length=48, lr=5e-4, warmup_steps=6,
                  eval_every=10, attention_dropout=0.0, scale=20.0)


def _with(base: dict, **changes) -> dict:
    return {**base, **changes}


SIMCSE_LONG = _with(SIMCSE, max_steps=150, warmup_steps=10, eval_every=15)


TINY = dict(max_steps=2, batch_size=4, max_length=16, eval_every=1, warmup_steps=0)
VARIANTS = {  # name -> (bidirectional, pooling, [stage settings in order])
    "cpu": {
        "bi + MNTP + SimCSE": (True, "mean", [MNTP, SIMCSE]),
        "causal + SimCSE": (False, "mean", [SIMCSE]),
        "bi + SimCSE (no MNTP)": (True, "mean", [SIMCSE]),
        "bi + MNTP + supervised (SNLI)": (True, "mean", [MNTP, SUPERVISED]),
        "bi + MNTP + SimCSE, 64 tokens": (True, "mean", [MNTP, _with(SIMCSE, max_length=64)]),
        "bi + MNTP + SimCSE, lr 1e-3": (True, "mean", [MNTP, _with(SIMCSE, lr=1e-3)]),
        "bi + MNTP + SimCSE, weighted mean": (True, "weighted_mean", [MNTP, SIMCSE]),
        "bi + MNTP + SimCSE, dropout 0.1": (True, "mean", [MNTP, _with(SIMCSE, attention_dropout=0.1)]),
        "bi + MNTP + supervised, lr 2e-4": (True, "mean", [MNTP, _with(SUPERVISED, lr=2e-4)]),
        "bi + MNTP + supervised (SNLI), no instructions": (True, "mean", [MNTP, _with(SUPERVISED, use_instructions=False)]),
        "bi + MNTP + supervised, batch 32": (True, "mean", [MNTP, _with(SUPERVISED, batch_size=32)]),
        # 2026-12-02 seeds: at 60 steps the bidirectional curves were still rising when the rate reached 0
        # (seed 1: 36 -> 58 over steps 20-60), so the long variants give every seed time to take off.
        "bi + MNTP + SimCSE, 150 steps": (True, "mean", [MNTP, SIMCSE_LONG]),
        "causal + SimCSE, 150 steps": (False, "mean", [SIMCSE_LONG]),
    },
    "smoke": {
        "bi + MNTP + SimCSE": (True, "mean", [_with(MNTP, **{**TINY, "batch_size": 2}), _with(SIMCSE, **TINY)]),
        "causal + SimCSE": (False, "mean", [_with(SIMCSE, **TINY)]),
    },
}


def with_seeds(variants: dict, seeds: list[int] | None) -> dict:
    """Each variant once per seed of its *last* stage (data order, dropout masks, LoRA init); earlier
    stages keep their seed, so they are trained once and shared. Seed 42 (the default) keeps the plain name."""
    if not seeds:
        return variants
    out = {}
    for name, (bidirectional, pooling, stages) in variants.items():
        for seed in seeds:
            label = name if seed == 42 else f"{name}, seed {seed}"
            out[label] = (bidirectional, pooling, [*stages[:-1], _with(stages[-1], seed=seed)] if seed != 42 else stages)
    return out


def seed_spread(results: dict) -> str:
    """Mean, min and max final dev over the seeds of each variant that ran with more than one."""
    groups: dict[str, list[float]] = {}
    for name, r in results.items():
        groups.setdefault(name.split(", seed ")[0], []).append(r["final_dev"])
    rows = [f"| {name} | {len(v)} | {sum(v) / len(v):.1f} | {min(v):.1f} | {max(v):.1f} |"
            for name, v in groups.items() if len(v) > 1]
    if not rows:
        return ""
    return ("\nSeed spread of the last stage (final dev):\n\n| variant | seeds | mean | min | max |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def stage_data(objective: str, args) -> str | list[str]:
    return {"mntp": args.corpus or "builtin:wiki-leads", "simcse": args.simcse_corpus or args.corpus or
            str(args.data_dir / "corpora/wiki1m_for_simcse/wiki1m_for_simcse.txt"),
            "supervised": args.triplets or [f"snli:{args.data_dir}/nli/SNLI/snli_1.0_{s}.jsonl.gz" for s in ("dev", "test")]
            }[objective]


def build_stage(settings: dict, args) -> StageConfig:
    extra = {"text_unit": "line", "save_every": 20, "eval_data": args.dev, "eval_limit": args.dev_limit}
    return StageConfig(name=settings["objective"], data=stage_data(settings["objective"], args), **extra, **settings)


def key_of(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def read_log(stage_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (stage_dir / "log.jsonl").read_text().splitlines() if x.strip()]


def run_variant(name: str, spec: tuple, args) -> dict:
    """Train the variant's stages in order (each cached by its settings and start); return its dev curve."""
    bidirectional, pooling, stages = spec
    model, offset, curve, stage_rows = args.model, 0.0, [], []
    for settings in stages:
        stage = build_stage(settings, args)
        out = args.work / f"{stage.objective}-{key_of(model, bidirectional, pooling, settings, args.dev_limit)}"
        recipe = Recipe(name=name, model=model, pooling=pooling, bidirectional=bidirectional, stages=[stage])
        model = str(train(recipe, out, resume=True))
        log = read_log(out / f"stage1-{stage.name}")
        curve += [{"stage": stage.name, "step": r["step"], "minutes": (offset + r["elapsed"]) / 60,
                   "dev": 100 * r["dev_spearman"]} for r in log if "dev_spearman" in r]
        minutes = max(r.get("elapsed", 0.0) for r in log) / 60
        stage_rows.append({"stage": stage.name, "minutes": minutes, "s_per_step": 60 * minutes / stage.max_steps,
                           "padding": sum(r.get("padding", 0) for r in log if "loss" in r) / stage.max_steps})
        offset += 60 * minutes
    return {"settings": [asdict(build_stage(s, args)) for s in stages],
            "bidirectional": bidirectional, "pooling": pooling, "curve": curve, "stages": stage_rows,
            "minutes": offset / 60, "start_dev": curve[0]["dev"], "final_dev": curve[-1]["dev"],
            "best_dev": max(p["dev"] for p in curve), "encoder": model}


def markdown(results: dict) -> str:
    lines = ["| variant | train min | untrained dev | dev after each stage | final dev | best dev (step) | s/step |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ends = " / ".join(f"{p['dev']:.1f}" for i, p in enumerate(r["curve"])
                          if i + 1 == len(r["curve"]) or r["curve"][i + 1]["stage"] != p["stage"])
        best = max(r["curve"], key=lambda p: p["dev"])
        steps = " / ".join(f"{s['stage']} {s['s_per_step']:.2f}" for s in r["stages"])
        lines.append(f"| {name} | {r['minutes']:.1f} | {r['start_dev']:.1f} | {ends} | {r['final_dev']:.1f} | "
                     f"{best['dev']:.1f} ({best['stage']} {best['step']}) | {steps} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, r in results.items():
        ax.plot([p["minutes"] for p in r["curve"]], [p["dev"] for p in r["curve"]], "o-", markersize=3, label=name)
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("STS Benchmark dev Spearman x100")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(VARIANTS), default="cpu")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--corpus", help="MNTP (and SimCSE) texts; default builtin:wiki-leads / Wiki1M")
    p.add_argument("--simcse-corpus")
    p.add_argument("--triplets", help="supervised triplets; default SNLI dev+test from --data-dir")
    p.add_argument("--dev", help="scored dev pairs; default STS Benchmark dev from --data-dir")
    p.add_argument("--dev-limit", type=int, default=500)
    p.add_argument("--only", nargs="*", help="run only these variants")
    p.add_argument("--seeds", nargs="*", type=int, help="train each variant's last stage once per seed (42 = default)")
    p.add_argument("--work", type=Path, default=Path("runs/sweep"))
    p.add_argument("--results", type=Path, default=Path("bench/results"))
    args = p.parse_args()
    args.dev = args.dev or str(args.data_dir / "sts/STSBenchmark/sts-dev.csv")
    args.work = args.work / args.profile
    done_file = args.work / "sweep.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    results, started = {}, time.time()
    chosen = {n: v for n, v in VARIANTS[args.profile].items() if not args.only or n in args.only}
    for name, spec in with_seeds(chosen, args.seeds).items():
        key = key_of(name, spec, args.model, args.dev, args.dev_limit)
        if key not in done:
            done[key] = run_variant(name, spec, args)
            write_json_atomic(done_file, done)
        results[name] = done[key]
        print(f"{name}: dev {results[name]['start_dev']:.1f} -> {results[name]['final_dev']:.1f} "
              f"in {results[name]['minutes']:.1f} min", flush=True)
    report(args, results, time.time() - started)


def environment() -> dict:
    """What decides bf16 numerics besides our code: CPU model, thread count and library versions.
    Runs with equal settings agree to the digit on one host; hosts may differ (see the closing notes)."""
    import importlib.metadata as metadata

    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor())
    versions = {name: metadata.version(name) for name in ("torch", "transformers", "peft", "lm2vec")}
    return {"cpu": cpu, "threads": torch.get_num_threads(), "versions": versions}


def earlier_variants(path: Path) -> dict:
    """Variants an earlier run of the same day wrote: a run with --only adds to the day's table, never shrinks it."""
    return json.loads(path.read_text())["variants"] if path.is_file() else {}


def report(args, results: dict, seconds: float) -> None:
    date = datetime.date.today().isoformat()
    stem = args.results / f"sweep-{args.profile}-{date}"
    args.results.mkdir(parents=True, exist_ok=True)
    payload = {"date": date, "model": args.model, "profile": args.profile, "dev": args.dev, "dev_limit": args.dev_limit,
               "device": f"CPU {platform.machine()}, 2 threads", "environment": environment(),
               "wall_seconds_this_run": round(seconds),
               "note": "dev Spearman x100 on a fixed sample of STS Benchmark dev pairs, no instruction, weights as "
                       "trained (bf16 base where the CPU has bf16 units); minutes are training time without evaluation",
               "variants": results}
    payload["variants"] = {**earlier_variants(Path(f"{stem}.json")), **results}
    write_json_atomic(Path(f"{stem}.json"), payload)
    table = markdown(payload["variants"]) + seed_spread(payload["variants"])
    Path(f"{stem}.md").write_text(f"Model {args.model}, dev {args.dev} ({args.dev_limit} pairs), {date}.\n\n{table}")
    plot(payload["variants"], Path(f"{stem}-dev-curves.png"))
    print(table)


if __name__ == "__main__":
    main()
