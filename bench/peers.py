"""Peers benchmark (issue 15.6): LLM2Vec against the methods that answer the same question another way,
trained with the same data and budget and evaluated with the same code.

    LLM2Vec unsupervised (bi + MNTP + SimCSE) and supervised (bi + MNTP + supervised, SNLI)
    soft-annealed (the annealed-simcse recipe: SimCSE with attention going causal -> bidirectional over
    its first half, no MNTP; the sweep's best dev score per minute, sweep-cpu-2026-12-03)
    Echo (Springer et al. 2024): causal, untrained and after the supervised stage
    contextual token (Causal2Vec): causal, all-MiniLM-L6-v2 pre-encoder, + the supervised stage
    latent-attention pooling (NV-Embed): bi + MNTP + supervised with the layer
    Matryoshka: bi + MNTP + supervised with matryoshka_dims, scored at each width (and, for contrast,
    the plain supervised encoder cut to the same widths)
    causal + mean untrained, causal + supervised: the controls Echo and the contextual token build on

Stages come from bench/quality.py's profile (CPU: MNTP 300 x 8 x 128, SimCSE 300 x 32 x 32, supervised
60 x 16 x 48, annealed SimCSE 150, the settings bench/sweep.py chose) and train through sweep.run_variant
into the same --work folder, so stages a quality run or a sweep already trained (with the same --threads)
are reused, and so are the vectors of its evaluations (the embedding cache is keyed by weights and
texts). Evaluation: mteb's own evaluators through lm2vec's adapter (src/lm2vec/eval/mteb.py) on the
STS tasks + Banking77, Emotion, TwitterSemEval2015 of the local data pack, LLM2Vec's instructions, the quality profile's sampling. Cost:
encode throughput in *text* tokens per second (a text counts its plain tokens, so Echo's doubled
sequence shows as half the speed), relative to plain mean pooling, on the same sentences for every row.

    python bench/peers.py --profile cpu --data-dir ../shared/data --threads 2     # hours on 2 CPU cores
    python bench/peers.py --threads 1 --train-only  # e.g. once per core (taskset), then --eval-threads 2
    (--scores-only scores the rows beside other work; speed is measured, all rows in one pass, by a full run)
    python bench/peers.py --profile smoke                                        # a tiny random model

Prints a table, writes bench/results/peers-<profile>-<date>.json and .md. Re-runs resume: trained
stages, scored rows and embeddings are cached under --work.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from lm2vec import Encoder
from lm2vec.data.scored_pairs import load_scored_pairs
from lm2vec.io import write_json_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the profiles and task lists of the quality benchmark)
import sweep  # noqa: E402  (training: run_variant and its stage cache)

TASKS = quality.STS + quality.OTHER
PROFILES = {  # quality.py's stages and evaluation sampling; dims: Matryoshka widths (None: from the model)
    # smoke: one task of each kind (STS, classification, pair classification), to check the plumbing
    "smoke": {**quality.PROFILES["smoke"], "dims": None, "speed_texts": 16, "data_limit": 64,
              "tasks": ["STSBenchmark", "Banking77Classification", "TwitterSemEval2015"]},
    "cpu": {**quality.PROFILES["cpu"], "dims": [576, 256, 128, 64], "speed_texts": 512, "data_limit": None,
            "tasks": TASKS},
}
TRAINED_ROWS = {
    "llm2vec_unsup": "LLM2Vec unsupervised (bi + MNTP + SimCSE)",
    "annealed_unsup": "soft-annealed bi + SimCSE (causal -> bi over half of SimCSE, no MNTP)",
    "llm2vec_sup": "LLM2Vec supervised (bi + MNTP + supervised)",
    "causal_sup": "causal + supervised (control)",
    "echo_sup": "Echo + supervised (causal)",
    "contextual_sup": "contextual token + supervised (causal, last token, concat)",
    "latent_sup": "latent-attention pooling + supervised (bi + MNTP)",
}


def specs(stages: dict, dims: list[int], contextual: str) -> dict[str, tuple]:
    """Every trained variant as a sweep spec: (bidirectional, pooling, [stages], encoder settings)."""
    m, s, u = stages["mntp"], stages["simcse"], stages["supervised"]
    return {"llm2vec_unsup": (True, "mean", [m, s]), "annealed_unsup": (True, "mean", [stages["annealed"]]),
            "llm2vec_sup": (True, "mean", [m, u]), "causal_sup": (False, "mean", [u]),
            "echo_sup": (False, "mean", [u], {"echo": True}),
            "contextual_sup": (False, "last", [u], {"contextual": contextual}),
            "latent_sup": (True, "mean", [m, u], {"latent_attention": True}),
            "matryoshka_sup": (True, "mean", [m, sweep._with(u, matryoshka_dims=dims)])}


def train(args, profile: dict, dims: list[int]) -> dict[str, dict]:
    """Train (or find in the cache) every variant; {key: sweep result with 'encoder' and 'minutes'}."""
    limited = {name: sweep._with(stage, data_limit=profile["data_limit"]) if profile["data_limit"] else stage
               for name, stage in profile["stages"].items()}
    chosen = specs(limited, dims, args.contextual_encoder)
    return {key: sweep.run_variant(key, spec, args) for key, spec in chosen.items()
            if not args.variants or key in args.variants}


def reuse_quality_vectors(work: Path) -> int:
    """Link the embedding caches of bench/quality.py's evaluations under <work>/eval into this benchmark's
    cache: entries are keyed by the weights' fingerprint, task, instruction and texts, so a row whose
    encoder a quality run already scored on the same samples is read, not re-encoded. Returns the links made."""
    ours, made = work / "peers-embeddings", 0
    ours.mkdir(parents=True, exist_ok=True)
    for fingerprint_dir in sorted(work.glob("eval/*/embedding_cache/*")):
        link = ours / fingerprint_dir.name
        if fingerprint_dir.is_dir() and not link.exists():
            link.symlink_to(fingerprint_dir.resolve(), target_is_directory=True)
            made += 1
    return made


def rows(base: str, trained: dict[str, dict], dims: list[int]) -> list[dict]:
    """The table's rows: name, encoder folder or model, settings for from_pretrained, width, training key."""
    out = [dict(name="plain mean pooling: bi, untrained (speed reference)", model=base, settings={}),
           dict(name="causal + mean, untrained", model=base, settings={"bidirectional": False}),
           dict(name="Echo: causal + mean, untrained", model=base, settings={"bidirectional": False, "echo": True})]
    for key, name in TRAINED_ROWS.items():
        out.append(dict(name=name, model=trained[key]["encoder"], settings={}, key=key))
        if key == "llm2vec_sup":  # its vectors cut to the Matryoshka widths, beside it (they share its memo)
            out += [dict(name=f"LLM2Vec supervised cut to {d} (no Matryoshka)", model=trained[key]["encoder"],
                         settings={}, dims=d, key=key) for d in dims[1:]]
    out += [dict(name=f"Matryoshka supervised @{d}", model=trained["matryoshka_sup"]["encoder"], settings={},
                 dims=d, key="matryoshka_sup") for d in dims]
    return out


class Truncated:
    """An encoder whose vectors keep their first `dims` components (encode(dimensions=d) without
    normalising: cosines do not care), sharing one memo of full vectors between the widths of a model."""

    def __init__(self, encoder: Encoder, dims: int | None, memo: dict) -> None:
        self.encoder, self.memo = encoder, memo
        self.dims = dims or encoder.embedding_dim
        self.name_or_path, self.config, self.parameters = encoder.name_or_path, encoder.config, encoder.parameters
        self.embedding_dim = self.dims

    def fingerprint(self) -> str:
        base = self.encoder.fingerprint()
        return base if self.dims == self.encoder.embedding_dim else f"{base}-d{self.dims}"

    def encode(self, texts, instruction=None, batch_size=32, **kwargs):
        key = (instruction, tuple(texts))
        if key not in self.memo:
            self.memo[key] = self.encoder.encode(list(texts), instruction=instruction, batch_size=batch_size)
        return self.memo[key][:, : self.dims]


def speed(encoder: Encoder, texts: list[str], batch_size: int) -> dict:
    """Encode throughput in the texts' own (plain) tokens per second, the sequence the LLM really runs per
    text, and the parameters the method adds to the backbone."""
    plain = sum(len(ids) for ids in encoder.tokenizer(texts)["input_ids"])
    sequence = sum(len(t.ids) for t in encoder.tokenize([(None, t) for t in texts])) / len(texts)
    encoder.encode(texts, batch_size=batch_size)  # warm-up: the timed pass finds everything allocated
    began = time.perf_counter()
    encoder.encode(texts, batch_size=batch_size)
    extras = list(encoder.extras.parameters())
    return {"text_tokens_per_s": plain / (time.perf_counter() - began),
            "llm_tokens_per_text": sequence + ("contextual" in encoder.extras),
            "added_params": sum(p.numel() for p in extras),
            "added_trainable_params": sum(p.numel() for p in extras if p.requires_grad)}


def score_row(row: dict, encoder: Encoder, tasks: list, args, profile: dict, memo: dict) -> dict:
    """mteb main scores (x100) of one row, through the embedding cache under --work."""
    from lm2vec.eval.cache import EmbeddingCache
    from lm2vec.eval.mteb import MTEBEncoder, run_task
    from lm2vec.eval.mteb_instructions import load_instructions

    target = Truncated(encoder, row.get("dims"), memo)
    cache = EmbeddingCache(args.work / "peers-embeddings", target.fingerprint())
    model = MTEBEncoder(target, load_instructions(), cache, profile["batch_size"])
    scores = {}
    for task in tasks:
        result = run_task(model, task, profile["batch_size"])
        scores[task.metadata.name] = None if result["main_score"] is None else 100 * result["main_score"]
    return scores


def evaluate(args, profile: dict, table_rows: list[dict]) -> dict[str, dict]:
    """Score every row; finished rows come from <work>/peers-table.json, so an interrupted run resumes."""
    from lm2vec.eval.mteb import get_tasks

    tasks = get_tasks(profile["tasks"], args.data_dir, profile["eval_limit"])  # loaded once, scored for every row
    for task in tasks:
        if profile["n_experiments"] and hasattr(task, "n_experiments"):
            task.n_experiments = profile["n_experiments"]
    done_file, table, loaded = args.work / "peers-table.json", {}, {}
    done = sweep.read_json(done_file)
    for row in table_rows:
        key = json.dumps([row, profile], sort_keys=True, default=str)
        if key not in done:
            model = model_key(row)
            if model not in loaded:  # the rows of one model (its widths) share it and its memo of vectors
                loaded = {model: (Encoder.from_pretrained(row["model"], device=args.device, **row["settings"]), {})}
            encoder, memo = loaded[model]
            done[key] = score_row(row, encoder, tasks, args, profile, memo)
            write_json_atomic(done_file, done)
        table[row["name"]] = {**done[key], "STS avg": _mean([done[key].get(t) for t in quality.STS])}
        print(f"{row['name']}: STS avg {table[row['name']]['STS avg']:.2f}", flush=True)
    return table


def speeds(args, profile: dict, table_rows: list[dict], texts: list[str]) -> dict[str, dict]:
    """Encode speed of every distinct model, measured here one after the other (never cached: a table's
    ratios must come from one run on one machine state), {model key: speed()}."""
    measured = {}
    for row in table_rows:
        model = model_key(row)
        if model not in measured:
            encoder = Encoder.from_pretrained(row["model"], device=args.device, **row["settings"])
            measured[model] = speed(encoder, texts, profile["batch_size"])
            del encoder
    return measured


def model_key(row: dict) -> str:
    return json.dumps([row["model"], row["settings"]], sort_keys=True)


def settings_line(profile: dict) -> str:
    stages = "; ".join(f"{n}: {c['max_steps']} steps x batch {c['batch_size']} x {c['max_length']} tokens, lr {c['lr']}"
                       for n, c in profile["stages"].items())
    return (f"Training (LoRA r16): {stages}. Evaluation: {', '.join(profile['tasks'])}, splits sampled to "
            f"{profile['eval_limit'] or 'all'} rows, {profile['n_experiments'] or 'mteb default'} classification "
            f"experiments, LLM2Vec's instructions. Speed: {profile['speed_texts']} dev sentences, encode batch "
            f"{profile['batch_size']}, each text's plain tokens per second (Echo's doubled sequence counts once).")


def _hidden_size(model: str) -> int:
    from transformers import AutoConfig

    from lm2vec.core.models import resolve_model_path

    return AutoConfig.from_pretrained(resolve_model_path(model)).get_text_config().hidden_size


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def markdown(table: dict[str, dict], minutes: dict[str, float], table_rows: list[dict]) -> str:
    reference = next(iter(table.values()))["text_tokens_per_s"]
    columns = ["STS avg", "Banking77Classification", "EmotionClassification", "TwitterSemEval2015"]
    lines = ["| method | STS avg | Banking77 | Emotion | Twitter | train min | text tok/s | x plain mean | "
             "LLM tokens/text | added params |", "|---" * 10 + "|"]
    for row in table_rows:
        r = table[row["name"]]
        cells = ["n/a" if r.get(c) is None else f"{r[c]:.1f}" for c in columns]
        cells += [f"{minutes.get(row.get('key'), 0.0):.1f}", f"{r['text_tokens_per_s']:.0f}",
                  f"{r['text_tokens_per_s'] / reference:.2f}", f"{r['llm_tokens_per_text']:.1f}",
                  f"{r['added_params'] / 1e6:.2f}M ({r['added_trainable_params'] / 1e6:.2f}M trained)"]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tiny_model(folder: Path) -> str:
    """The smoke profile's model: a random 2-layer Llama (hidden 64) with SmolLM2's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lm2vec.core.models import resolve_model_path

    if not (folder / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m"))
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--model", help="default: smollm2-135m; the smoke profile builds a tiny random model")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--contextual-encoder", default="all-minilm-l6-v2", help="the contextual token's pre-encoder")
    p.add_argument("--corpus", help="MNTP texts (default builtin:wiki-leads); SimCSE's too unless --simcse-corpus")
    p.add_argument("--simcse-corpus")
    p.add_argument("--triplets", help="supervised triplets; default SNLI dev+test from --data-dir")
    p.add_argument("--dev", help="scored dev pairs; default STS Benchmark dev from --data-dir")
    p.add_argument("--dev-limit", type=int, default=500)
    p.add_argument("--work", type=Path, default=Path("runs/sweep"), help="shared with bench/sweep.py and quality.py")
    p.add_argument("--results", type=Path, default=Path("bench/results"))
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, help="torch threads (the same value as a quality run's reuses its stages)")
    p.add_argument("--eval-threads", type=int, help="torch threads for scoring and speed (default: --threads)")
    p.add_argument("--variants", nargs="*", choices=sorted(TRAINED_ROWS) + ["matryoshka_sup"],
                   help="with --train-only: train only these (e.g. half per core)")
    p.add_argument("--train-only", action="store_true", help="train the variants and stop")
    p.add_argument("--scores-only", action="store_true", help="score the rows and stop (no speed, no table): "
                   "e.g. beside other work, then a run on a quiet machine measures speed and writes the table")
    args = p.parse_args()
    if args.variants and not args.train_only:
        p.error("--variants needs --train-only (the table needs every variant)")
    run(args)


def run(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    profile, started = PROFILES[args.profile], time.time()
    args.work = args.work / args.profile
    args.work.mkdir(parents=True, exist_ok=True)
    args.model = args.model or (tiny_model(args.work / "tiny-llama") if args.profile == "smoke" else "smollm2-135m")
    args.dev = args.dev or str(args.data_dir / "sts/STSBenchmark/sts-dev.csv")
    args.doc_queries = args.doc_distractors = args.doc_max_length = 0  # no document dev here
    dims = profile["dims"] or [hidden // k for k in (1, 2, 4) for hidden in [_hidden_size(args.model)]]
    print(settings_line(profile), flush=True)
    trained = train(args, profile, dims)
    if args.train_only:
        print("trained:", ", ".join(f"{k} {v['minutes']:.1f} min" for k, v in trained.items()), flush=True)
        return
    if args.eval_threads:
        torch.set_num_threads(args.eval_threads)
    print(f"linked {reuse_quality_vectors(args.work)} embedding caches of quality runs", flush=True)
    table_rows = rows(args.model, trained, dims)
    texts = sorted(set(load_scored_pairs(args.dev).sentence1))[: profile["speed_texts"]]
    table = evaluate(args, profile, table_rows)
    if args.scores_only:
        return
    measured = speeds(args, profile, table_rows, texts)
    table = {row["name"]: {**table[row["name"]], **measured[model_key(row)]} for row in table_rows}
    report(args, profile, trained, table, table_rows, time.time() - started)


def report(args, profile: dict, trained: dict, table: dict, table_rows: list[dict], seconds: float) -> None:
    date = datetime.date.today().isoformat()
    minutes = {key: round(result["minutes"], 1) for key, result in trained.items()}
    text = (f"Model {args.model}, profile {args.profile}, {round(seconds / 60)} min in this invocation. "
            f"{settings_line(profile)}\n\n")
    text += markdown(table, minutes, table_rows)
    payload = {"date": date, "model": args.model, "profile": args.profile, "environment": sweep.environment(),
               "settings": profile, "train_minutes": minutes, "total_seconds": round(seconds),
               "dev_curves": {key: result["curve"] for key, result in trained.items()},
               "rows": table_rows, "scores": table}
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"peers-{args.profile}-{date}"
    write_json_atomic(stem.with_suffix(".json"), payload)
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
