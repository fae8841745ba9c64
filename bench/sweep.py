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
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import platform
import random
import time
from dataclasses import asdict
from pathlib import Path

from lm2vec.io import write_json_atomic
from lm2vec.training.loop import DONE, StageRunner
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
SIMCSE_450 = _with(SIMCSE, max_steps=450, warmup_steps=30, eval_every=45)
MNTP_300 = _with(MNTP, max_steps=300, warmup_steps=30, eval_every=100)
SIMCSE_300 = _with(SIMCSE, max_steps=300, warmup_steps=20, eval_every=30)
ANNEALED_SIMCSE_300 = _with(SIMCSE_300, bidirectional_anneal_steps=150)
ANNEALED_MNTP_300 = _with(MNTP_300, bidirectional_anneal_steps=150)
# SimCSE on document-length texts: Wikipedia lead paragraphs (builtin corpus) cut at 128 tokens
PARAGRAPHS = dict(data="builtin:wiki-leads", text_unit="paragraph", max_length=128)
STS_INSTRUCTION = "Retrieve semantically similar text:"  # LLM2Vec's instruction for STS tasks
# Full fine-tuning at a fifth of LoRA's rate: every weight moves, where LoRA's update is scaled by alpha/r = 2
FULL = dict(finetune="full", lr=1e-4)


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
        # 2026-12-03: on a bf16 base each stage now runs the earlier adapters unmerged (stacked); this
        # variant starts SimCSE from the merged MNTP weights instead, as stages chained before.
        "bi + MNTP + SimCSE, 150 steps, unstacked": (True, "mean", [MNTP, _with(SIMCSE_LONG, stacked=False)]),
        # where the rest of a 60-minute budget goes: more MNTP, more SimCSE, longer texts
        "bi + MNTP 300 + SimCSE 150": (True, "mean", [MNTP_300, SIMCSE_LONG]),
        "bi + MNTP + SimCSE 450": (True, "mean", [MNTP, SIMCSE_450]),
        "causal + SimCSE 450": (False, "mean", [SIMCSE_450]),
        "bi + MNTP + SimCSE 150, LoRA dropout 0": (True, "mean", [MNTP, _with(SIMCSE_LONG, lora={"dropout": 0.0})]),
        "bi + MNTP + SimCSE 150, paragraphs x 128": (True, "mean", [MNTP, _with(SIMCSE_LONG, **PARAGRAPHS)]),
        "causal + SimCSE 150, paragraphs x 128": (False, "mean", [_with(SIMCSE_LONG, **PARAGRAPHS)]),
        # 2026-12-03, round 2: the other dimensions issue #10 names, each against "bi + MNTP + SimCSE, 150 steps"
        "bi + SimCSE 150 (no MNTP)": (True, "mean", [SIMCSE_LONG]),
        "bi (annealed over 75 steps) + SimCSE 150 (no MNTP)": (True, "mean", [_with(SIMCSE_LONG, bidirectional_anneal_steps=75)]),
        "bi + MNTP (annealed over 50 steps) + SimCSE 150": (True, "mean", [_with(MNTP, bidirectional_anneal_steps=50),
                                                                            SIMCSE_LONG]),
        "causal + SimCSE 150, full fine-tuning": (False, "mean", [_with(SIMCSE_LONG, **FULL)]),
        "bi + MNTP + SimCSE 150, full fine-tuning": (True, "mean", [MNTP, _with(SIMCSE_LONG, **FULL)]),
        "bi + MNTP + SimCSE 150, LoRA r64": (True, "mean", [MNTP, _with(SIMCSE_LONG, lora={"r": 64, "alpha": 128})]),
        "bi + MNTP + SimCSE 150, weighted mean": (True, "weighted_mean", [MNTP, SIMCSE_LONG]),
        "bi + MNTP (mask rate 0.4) + SimCSE 150": (True, "mean", [_with(MNTP, mask_rate=0.4), SIMCSE_LONG]),
        "bi + MNTP + SimCSE 150, attention dropout 0.1": (True, "mean", [MNTP, _with(SIMCSE_LONG, attention_dropout=0.1)]),
        "bi + MNTP + SimCSE 150, batch 64": (True, "mean", [MNTP, _with(SIMCSE_LONG, batch_size=64)]),
        # 2026-12-03, round 3: MNTP 300 led round 1; the SimCSE budget for both attentions, and the rows of
        # the quality benchmark on that MNTP (bench/quality.py trains the same specs, so it reuses these)
        "bi + MNTP 300 + SimCSE 300": (True, "mean", [MNTP_300, SIMCSE_300]),
        "causal + SimCSE 300": (False, "mean", [SIMCSE_300]),
        "bi + SimCSE 300 (no MNTP)": (True, "mean", [SIMCSE_300]),
        # soft annealing over the first half of SimCSE led round 2 (75.0 dev at step 105 of 150)
        "bi (annealed over 150 steps) + SimCSE 300 (no MNTP)": (True, "mean", [ANNEALED_SIMCSE_300]),
        "bi + MNTP 300": (True, "mean", [MNTP_300]),
        "bi + MNTP 300 + supervised (SNLI)": (True, "mean", [MNTP_300, SUPERVISED]),
        "bi + MNTP 300 + supervised (SNLI), no instructions": (True, "mean", [MNTP_300, _with(SUPERVISED,
                                                                                               use_instructions=False)]),
        # 2026-12-03, round 4: LoRA r64 led round 2 (78.0 dev against r16's 63.5 on MNTP 100 + SimCSE 150)
        "bi + MNTP 300 + SimCSE 150, LoRA r64": (True, "mean", [MNTP_300, _with(SIMCSE_LONG, lora={"r": 64, "alpha": 128})]),
        # the instruction question: LLM2Vec's STS instruction on every SimCSE text, and on the dev pairs
        "bi + MNTP + SimCSE 150, instruction": (True, "mean", [MNTP, _with(SIMCSE_LONG, instruction=STS_INSTRUCTION,
                                                                           eval_instruction=STS_INSTRUCTION)]),
        # 2026-12-04, round 5: r64 and the instruction at the recipe's full SimCSE budget
        "bi + MNTP 300 + SimCSE 300, LoRA r64": (True, "mean", [MNTP_300, _with(SIMCSE_300, lora={"r": 64, "alpha": 128})]),
        "bi + MNTP 300 + SimCSE 300, instruction": (True, "mean", [MNTP_300, _with(SIMCSE_300, instruction=STS_INSTRUCTION,
                                                                                    eval_instruction=STS_INSTRUCTION)]),
        # 2026-12-04, round 7: MNTP annealed over its first half led round 6 (MNTP 100 + SimCSE 150, both seeds)
        "bi + MNTP 300 (annealed over 150 steps) + SimCSE 300": (True, "mean", [ANNEALED_MNTP_300, SIMCSE_300]),
        "bi + MNTP 300 (annealed over 150 steps) + SimCSE 150": (True, "mean", [ANNEALED_MNTP_300, SIMCSE_LONG]),
    },
    "smoke": {
        "bi + MNTP + SimCSE": (True, "mean", [_with(MNTP, **{**TINY, "batch_size": 2}), _with(SIMCSE, **TINY)]),
        "causal + SimCSE": (False, "mean", [_with(SIMCSE, **TINY)]),
        "bi + MNTP + SimCSE, unstacked": (True, "mean", [_with(MNTP, **{**TINY, "batch_size": 2}),
                                                          _with(SIMCSE, **TINY, stacked=False)]),
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
    defaults = {"name": settings["objective"], "data": stage_data(settings["objective"], args), "text_unit": "line",
                "save_every": 20, "eval_data": args.dev, "eval_limit": args.dev_limit}
    return StageConfig(**{**defaults, **settings})


def key_of(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def read_log(stage_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (stage_dir / "log.jsonl").read_text().splitlines() if x.strip()]


def run_variant(name: str, spec: tuple, args) -> dict:
    """Train the variant's stages in order, as `lm2vec train` chains them (a bf16 stage stacks the
    earlier adapters); return its dev curve. Every stage is trained once into a folder named by its
    objective and the settings of all stages up to it (<objective>-<hash>/, holding log.jsonl,
    adapter/ and merged/), so variants that share a first stage share its folder, and the folders of
    one variant are linked from variant-<hash>/stageN-NAME. A last stage with `stacked: False` starts
    instead from the merged weights of the stages before it, loaded in the training precision (how
    stages chained before 2026-12-03), to measure what stacking buys. An optional fourth element of
    `spec` holds the recipe's `encoder:` settings (echo, contextual token, latent attention)."""
    bidirectional, pooling, stages, *rest = spec
    options = rest[0] if rest else {}
    stacked = stages[-1].get("stacked", True)
    stages = [{k: v for k, v in s.items() if k != "stacked"} for s in stages]
    configs = [build_stage(settings, args) for settings in stages]
    common = (args.model, bidirectional, pooling, args.dev_limit, args.threads)
    run_dir = args.work / f"variant-{key_of(*common, stages, stacked, *([options] if options else []))}"
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = Recipe(name=name, model=args.model, pooling=pooling, bidirectional=bidirectional, stages=configs,
                    encoder=options)
    model, adapters, stage_dirs = recipe.model, [], []
    for index, stage in enumerate(configs, start=1):
        last = index == len(configs)
        tag = ([] if stacked or not last else ["unstacked"]) + stage_options(options, stage.objective)
        shared = args.work / f"{stage.objective}-{key_of(*common, stages[:index], *tag)}"
        link = run_dir / f"stage{index}-{stage.name}"
        if not link.is_symlink():
            link.symlink_to(shared.resolve(), target_is_directory=True)
        earlier = adapters if stacked or not last else []
        with locked(shared):  # trained once, by whichever sweep process gets there first
            if not (shared / DONE).is_file():
                StageRunner(recipe, stage, model, shared, shared / "merged", resume=True,
                            earlier_adapters=earlier).run()
        model, adapters = str(shared / "merged"), [*adapters, shared / "adapter"]
        stage_dirs.append(shared)
    import torch

    return {**summarise_run(configs, stage_dirs, bidirectional, pooling, args, model),
            "threads": torch.get_num_threads(), "doc_dev": document_dev(model, args)}


def stage_options(options: dict, objective: str) -> list[dict]:
    """The encoder settings that can change what a stage trains, for its folder's key. MNTP never pools, so
    latent-attention settings leave it unchanged: such variants share the plain MNTP stage (the layer then
    starts fresh, seeded, in the next stage)."""
    latent_only = all(key.startswith("latent_attention") for key in options)
    return [] if not options or (objective == "mntp" and latent_only) else [options]


def document_dev(model: str, args, bidirectional: bool | None = None, query_instruction: str | None = None) -> float | None:
    """nDCG@10 x100 of SciFact *train* claims (a split no benchmark scores) retrieving their cited
    abstracts among a fixed sample of others, texts cut at --doc-max-length tokens: whether an encoder
    trained on sentences still serves documents. `query_instruction` goes on the claims only (as
    LLM2Vec's retrieval instructions do). None without the SciFact files."""
    import numpy as np

    from lm2vec import Encoder
    from lm2vec.eval.local_data import load_scifact

    if not args.doc_queries or not (args.data_dir / "retrieval/SciFact/claims_train.csv").is_file():
        return None
    split = load_scifact(args.data_dir, claims="train")["default"]["test"]
    rng = random.Random(0)
    queries = dict(zip(split["queries"]["id"], split["queries"]["text"]))
    chosen = rng.sample(sorted(queries), min(args.doc_queries, len(queries)))
    texts = {i: f"{t} {x}" for i, t, x in zip(split["corpus"]["id"], split["corpus"]["title"], split["corpus"]["text"])}
    relevant = sorted({d for q in chosen for d in split["qrels"][q]})
    others = sorted(set(texts) - set(relevant))
    docs = relevant + rng.sample(others, min(args.doc_distractors, len(others)))
    kwargs = {} if bidirectional is None else {"bidirectional": bidirectional}
    encoder = Encoder.from_pretrained(model, max_length=args.doc_max_length, **kwargs)
    scores = (encoder.encode([queries[q] for q in chosen], instruction=query_instruction, normalize=True)
              @ encoder.encode([texts[d] for d in docs], normalize=True).T)  # (Q, D)
    gains = []
    for row, q in zip(scores, chosen):
        top = [docs[i] for i in np.argsort(-row)[:10]]
        dcg = sum(1 / np.log2(rank + 2) for rank, d in enumerate(top) if d in split["qrels"][q])
        ideal = sum(1 / np.log2(rank + 2) for rank in range(min(10, len(split["qrels"][q]))))
        gains.append(dcg / ideal)
    return 100 * float(np.mean(gains))


def summarise_run(configs: list[StageConfig], stage_dirs: list[Path], bidirectional: bool, pooling: str, args,
                  encoder: str) -> dict:
    """The dev curve against training minutes (evaluation time left out) and per-stage step times."""
    offset, curve, stage_rows = 0.0, [], []
    for stage, stage_dir in zip(configs, stage_dirs):
        log = read_log(stage_dir)
        curve += [{"stage": stage.name, "step": r["step"], "minutes": (offset + r["elapsed"]) / 60,
                   "dev": 100 * r["dev_spearman"]} for r in log if "dev_spearman" in r]
        minutes = max(r.get("elapsed", 0.0) for r in log) / 60
        stage_rows.append({"stage": stage.name, "minutes": minutes, "s_per_step": 60 * minutes / stage.max_steps,
                           "padding": sum(r.get("padding", 0) for r in log if "loss" in r) / stage.max_steps})
        offset += 60 * minutes
    return {"settings": [asdict(c) for c in configs],
            "bidirectional": bidirectional, "pooling": pooling, "curve": curve, "stages": stage_rows,
            "minutes": offset / 60, "start_dev": curve[0]["dev"], "final_dev": curve[-1]["dev"],
            "best_dev": max(p["dev"] for p in curve), "encoder": encoder}


def markdown(results: dict) -> str:
    lines = ["| variant | threads | train min | untrained dev | dev after each stage | final dev | best dev (step) | s/step "
             "| doc dev |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ends = " / ".join(f"{p['dev']:.1f}" for i, p in enumerate(r["curve"])
                          if i + 1 == len(r["curve"]) or r["curve"][i + 1]["stage"] != p["stage"])
        best = max(r["curve"], key=lambda p: p["dev"])
        steps = " / ".join(f"{s['stage']} {s['s_per_step']:.2f}" for s in r["stages"])
        doc = "" if r.get("doc_dev") is None else f"{r['doc_dev']:.1f}"
        lines.append(f"| {name} | {r.get('threads', 2)} | {r['minutes']:.1f} | {r['start_dev']:.1f} | {ends} | "
                     f"{r['final_dev']:.1f} | {best['dev']:.1f} ({best['stage']} {best['step']}) | {steps} | {doc} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # distinct colours for up to 20 variants (tab10 repeats)
    for name, r in results.items():
        ax.plot([p["minutes"] for p in r["curve"]], [p["dev"] for p in r["curve"]], "o-", markersize=3, label=name)
    threads = sorted({str(r.get("threads") or "default") for r in results.values()})
    ax.set_xlabel(f"training minutes ({'/'.join(threads)} thread(s) per run; runs side by side share the machine)")
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
    p.add_argument("--doc-queries", type=int, default=150, help="SciFact train claims in the document dev (0: off)")
    p.add_argument("--doc-distractors", type=int, default=350, help="abstracts besides the cited ones")
    p.add_argument("--doc-max-length", type=int, default=160)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's). Two sweeps pinned to one core "
                   "each (taskset -c 0 / -c 1, --threads 1) did 1.55x the work of one on both cores here")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.dev = args.dev or str(args.data_dir / "sts/STSBenchmark/sts-dev.csv")
    args.work = args.work / args.profile
    args.work.mkdir(parents=True, exist_ok=True)
    done_file = args.work / "sweep.json"
    results, started = {}, time.time()
    variants = VARIANTS[args.profile]
    unknown = [n for n in args.only or [] if n not in variants]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; the {args.profile} profile has {list(variants)}")
    chosen = {n: variants[n] for n in args.only} if args.only else variants  # in the order given
    for name, spec in with_seeds(chosen, args.seeds).items():
        key = key_of(name, spec, args.model, args.dev, args.dev_limit, args.threads)
        if not claim(done_file, key):
            print(f"{name}: another sweep process is training it; skipped here", flush=True)
            continue
        done = read_json(done_file)
        if key not in done:
            result = run_variant(name, spec, args)
            with locked(done_file):  # another sweep process may have added its variants meanwhile
                write_json_atomic(done_file, {**read_json(done_file), key: result})
            done[key] = result
        results[name] = done[key]
        print(f"{name}: dev {results[name]['start_dev']:.1f} -> {results[name]['final_dev']:.1f} "
              f"in {results[name]['minutes']:.1f} min", flush=True)
    report(args, results, time.time() - started, untrained_doc_dev(args, done_file))


def untrained_doc_dev(args, done_file: Path) -> dict:
    """The document dev of the untrained model, causal and bidirectional (cached beside the variants)."""
    key = key_of("untrained-doc-dev", args.model, args.doc_queries, args.doc_distractors, args.doc_max_length)
    cached = read_json(done_file).get(key)
    if cached is None:
        cached = {name: document_dev(args.model, args, bidirectional=bi) for name, bi in
                  (("causal", False), ("bidirectional", True))}
        with locked(done_file):
            write_json_atomic(done_file, {**read_json(done_file), key: cached})
    return cached


def claim(done_file: Path, key: str) -> bool:
    """Take variant `key` for this process unless it is finished or a live process took it: sweeps
    started side by side on the same list share the work instead of repeating it."""
    claims_file = done_file.with_name("claims.json")
    with locked(done_file):
        if key in read_json(done_file):
            return True  # finished: reported from the cache
        claims = read_json(claims_file)
        owner = claims.get(key)
        if owner and owner != os.getpid() and Path(f"/proc/{owner}").exists():
            return False
        write_json_atomic(claims_file, {**claims, key: os.getpid()})
        return True


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


@contextlib.contextmanager
def locked(path: Path):
    """Exclusive lock beside `path`: sweeps running side by side (one per core) share the cache."""
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def report(args, results: dict, seconds: float, untrained_doc: dict | None = None) -> None:
    date = datetime.date.today().isoformat()
    stem = args.results / f"sweep-{args.profile}-{date}"
    args.results.mkdir(parents=True, exist_ok=True)
    payload = {"date": date, "model": args.model, "profile": args.profile, "dev": args.dev, "dev_limit": args.dev_limit,
               "device": f"CPU {platform.machine()}", "environment": environment(),
               "wall_seconds_this_run": round(seconds),
               "note": "dev Spearman x100 on a fixed sample of STS Benchmark dev pairs, no instruction, weights as "
                       "trained (bf16 base where the CPU has bf16 units); minutes are training time without evaluation",
               "untrained_doc_dev": untrained_doc,
               "doc_dev": f"nDCG@10 x100, {args.doc_queries} SciFact train claims over their cited abstracts and "
                          f"{args.doc_distractors} others, {args.doc_max_length} tokens",
               "variants": results}
    with locked(Path(f"{stem}.json")):
        payload["variants"] = {**earlier_variants(Path(f"{stem}.json")), **results}
        write_json_atomic(Path(f"{stem}.json"), payload)
        table = markdown(payload["variants"]) + seed_spread(payload["variants"])
        if untrained_doc and None not in untrained_doc.values():
            table += (f"\nDocument dev of the untrained model: causal {untrained_doc['causal']:.1f}, "
                      f"bidirectional {untrained_doc['bidirectional']:.1f} ({payload['doc_dev']}).\n")
        Path(f"{stem}.md").write_text(f"Model {args.model}, dev {args.dev} ({args.dev_limit} pairs), {date}.\n\n{table}")
        plot(payload["variants"], Path(f"{stem}-dev-curves.png"))
    print(table)


if __name__ == "__main__":
    main()
