"""Word-level linear probes (LLM2Vec §3.2): how much POS, chunk and entity information the frozen
token representations hold, read out by a linear classifier trained on one split and scored on another.

Words -> sub-tokens: the words are joined by single spaces, tokenized once, and each word takes the
tokens whose character offsets overlap it (a pure-space token such as SmolLM2's "Ġ" before digits
belongs to no word). That works for byte-level BPE and SentencePiece alike, with no `is_split_into_words`
or `add_prefix_space` switches per tokenizer.

A word is represented by its first sub-token's state or the mean over its sub-tokens. After MNTP the
state at position i-1 is trained to predict token i, so the paper reads token i from position i-1
(`shift=True`, LLM2Vec's `retroactive_labels="next_token"`). The default is off, by measurement: on
SmolLM2 after our CPU MNTP (100 steps) the shifted read-out lost POS against the untrained
bidirectional model (-2.2) while the unshifted one improved POS, chunking and NER (+2.5 / +2.0 / +6.3;
bench/results/quality-cpu-2026-12-02.json). The first token of a text has no previous state; it keeps its own.

Words cut off by max_length get no vector: they are left out of training and predicted as the majority
training tag at test time (counted, so a score never silently covers fewer words).
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lm2vec.core.batching import plan_batches
from lm2vec.core.tokenization import TokenizedText, truncate
from lm2vec.eval.cache import EmbeddingCache
from lm2vec.eval.conll import IOB_COLUMNS, Sentence, dataset_path, load_split, tag_scores
from lm2vec.eval.probe_classifier import fit_classifier
from lm2vec.io import write_json_atomic

POOLINGS = ("first", "mean")
RESULTS_FILE = "probe_results.json"


@dataclass(frozen=True)
class ProbeTask:
    """A probe: which dataset, which tag column, and the score it is ranked by."""

    dataset: str  # key of conll.DATASETS
    column: str  # tag column to predict
    main_metric: str  # "accuracy" or "f1" (exact-span F1)


TASKS: dict[str, ProbeTask] = {
    "conll2003-pos": ProbeTask("conll2003", "pos", "accuracy"),
    "conll2003-chunk": ProbeTask("conll2003", "chunk", "accuracy"),
    "conll2003-ner": ProbeTask("conll2003", "ner", "f1"),
    "conll2000-chunk": ProbeTask("conll2000", "chunk", "accuracy"),
}


@dataclass(frozen=True)
class ProbeSettings:
    """Everything besides the encoder and the data that decides a probe's score; stored with the results."""

    pooling: str = "first"  # word vector: "first" sub-token or "mean" of its sub-tokens
    shift: bool = False  # read token i from position i-1 (the paper's read-out after MNTP); see above
    train_limit: int | None = None  # seeded sample of that many training sentences
    test_limit: int | None = None
    seed: int = 0
    c: float = 0.01  # inverse L2 strength, as sklearn's C
    max_iter: int = 100
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("train_limit", "test_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.c <= 0 or self.max_iter < 1 or self.batch_size < 1:
            raise ValueError("c must be > 0, max_iter and batch_size >= 1")



# ---- words -> sub-token positions ---------------------------------------------------------------
@dataclass(frozen=True)
class WordSpans:
    """A sentence's tokens and, per word, the positions of its first and last sub-token (-1: cut off)."""

    tokens: TokenizedText
    first: np.ndarray  # (W,) int64
    last: np.ndarray  # (W,) int64


def word_spans(tokenizer: Any, words: tuple[str, ...] | list[str], max_length: int) -> WordSpans:
    """Tokenize the words joined by spaces; map each word to the content tokens overlapping it."""
    enc = tokenizer(
        " ".join(words),
        add_special_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        truncation=False,
    )
    ids, specials = enc["input_ids"], enc["special_tokens_mask"]
    kept = truncate(ids, specials, max_length)
    limit = len(kept) - (1 if len(kept) < len(ids) and specials[-1] else 0)  # original tokens still there
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    positions = np.flatnonzero(
        (np.arange(len(ids)) < limit) & ~np.asarray(specials, dtype=bool) & (offsets[:, 1] > offsets[:, 0])
    )
    starts, ends = offsets[positions, 0], offsets[positions, 1]
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    word_starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    first = np.searchsorted(ends, word_starts, side="right")  # first token ending after the word starts
    last = np.searchsorted(starts, word_starts + lengths, side="left") - 1  # last one starting inside it
    missing = (first >= len(positions)) | (first > last)
    first = np.where(missing, -1, positions[np.minimum(first, len(positions) - 1)] if len(positions) else -1)
    last = np.where(missing, -1, positions[np.clip(last, 0, None)] if len(positions) else -1)
    return WordSpans(TokenizedText(ids=kept, skip=0, truncated=len(kept) < len(ids)), first, last)


def gather_words(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    first: torch.Tensor,
    last: torch.Tensor,
    pooling: str = "first",
    shift: bool = False,
) -> torch.Tensor:
    """Word vectors (N, D) from hidden states (B, T, D): state of the first sub-token, or the mean over
    sub-tokens first..last (inclusive) of row `rows`; with `shift`, every position moves back by one."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if shift:
        first, last = (first - 1).clamp(min=0), (last - 1).clamp(min=0)
    if pooling == "first":
        return hidden[rows, first].float()
    sums = torch.cat(
        [
            hidden.new_zeros(hidden.shape[0], 1, hidden.shape[2], dtype=torch.float64),
            hidden.double().cumsum(dim=1),
        ],
        dim=1,
    )  # (B, T+1, D): sums[:, t] = sum of states < t
    counts = (last - first + 1).unsqueeze(-1)
    return ((sums[rows, last + 1] - sums[rows, first]) / counts).float()


# ---- encoding -----------------------------------------------------------------------------------------
def word_features(
    encoder: Any,
    sentences: list[Sentence],
    pooling: str = "first",
    shift: bool = False,
    batch_size: int = 32,
    show_progress: bool = False,
) -> np.ndarray:
    """Float32 (total words, D) in sentence order; NaN rows for words cut off by max_length."""
    spans = [word_spans(encoder.tokenizer, s.words, encoder.config.max_length) for s in sentences]
    bounds = np.concatenate([[0], np.cumsum([len(s.words) for s in sentences])])
    out = np.full((int(bounds[-1]), encoder.embedding_dim), np.nan, dtype=np.float32)
    batches = plan_batches([len(s.tokens.ids) for s in spans], batch_size)
    with torch.inference_mode():
        for indices in tqdm(batches, desc="probe features", unit="batch", disable=not show_progress):
            hidden = encoder.hidden_states(encoder.collate([spans[i].tokens for i in indices], "right"))
            rows = np.concatenate([np.full(len(spans[i].first), r) for r, i in enumerate(indices)])
            first = np.concatenate([spans[i].first for i in indices])
            last = np.concatenate([spans[i].last for i in indices])
            targets = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in indices])
            keep = first >= 0
            index = [torch.from_numpy(a[keep]).to(hidden.device) for a in (rows, first, last)]
            out[targets[keep]] = gather_words(hidden, *index, pooling, shift).cpu().numpy()
    return out


def cached_word_features(
    encoder: Any,
    sentences: list[Sentence],
    name: str,
    settings: ProbeSettings,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> np.ndarray:
    """word_features through the embedding cache, keyed by (fingerprint, name, words, sentence
    boundaries, pooling, shift): a re-run, or another task on the same sentences, never re-encodes."""
    options = {"pooling": settings.pooling, "shift": bool(settings.shift), "batch_size": settings.batch_size}
    if cache_dir is None:
        return word_features(encoder, sentences, **options, show_progress=show_progress)
    cache = EmbeddingCache(cache_dir, encoder.fingerprint())
    words = [w for s in sentences for w in s.words]
    lengths = [len(s.words) for s in sentences]
    key = json.dumps({"lengths": lengths, "pooling": settings.pooling, "shift": bool(settings.shift)})
    found = cache.get(f"probe-{name}", words, key)
    if found is None:
        found = word_features(encoder, sentences, **options, show_progress=show_progress)
        cache.put(f"probe-{name}", words, key, found)
    return found


# ---- the classifier ----------------------------------------------------------------------------------
def subsample(sentences: list[Sentence], limit: int | None, seed: int = 0) -> list[Sentence]:
    """A seeded random subset in file order (not the first N: those come from a few documents)."""
    if limit is None or limit >= len(sentences):
        return sentences
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    chosen = np.random.default_rng(seed).choice(len(sentences), size=limit, replace=False)
    return [sentences[i] for i in np.sort(chosen)]


def _run_task(
    name: str,
    train: list[Sentence],
    x_train: np.ndarray,
    test: list[Sentence],
    x_test: np.ndarray,
    settings: ProbeSettings,
) -> dict[str, Any]:
    """Fit on the train words that have vectors, predict every test word, score against the majority tag."""
    task = TASKS[name]
    y_train = np.asarray([t for s in train for t in s.tags[task.column]], dtype=object)
    majority = Counter(y_train).most_common(1)[0][0]
    has_train, has_test = ~np.isnan(x_train[:, 0]), ~np.isnan(x_test[:, 0])
    if not has_train.any():
        raise ValueError(f"{name}: no training word survived truncation; raise the encoder's max_length")
    started = time.perf_counter()
    model = fit_classifier(x_train[has_train], list(y_train[has_train]), settings.c, settings.max_iter)
    fit_s = time.perf_counter() - started
    predicted = np.full(len(x_test), majority, dtype=object)
    if has_test.any():
        predicted[has_test] = model.predict(x_test[has_test])
    gold = [list(s.tags[task.column]) for s in test]
    bounds = np.cumsum([0] + [len(g) for g in gold])
    guesses = [list(predicted[a:b]) for a, b in itertools.pairwise(bounds)]
    spans = task.column in IOB_COLUMNS
    scores = tag_scores(gold, guesses, spans)
    return {
        "main_metric": task.main_metric,
        "main_score": scores[task.main_metric],
        "scores": scores,
        "majority_baseline": tag_scores(gold, [[majority] * len(g) for g in gold], spans),
        "classifier": {"iterations": model.iterations, "converged": model.converged},
        "fit_s": round(fit_s, 2),
        "words": {"train": int(has_train.sum()), "test": len(x_test), "test_cut_off": int((~has_test).sum())},
    }


# ---- entry points -------------------------------------------------------------------------------------
def check_tasks(tasks: list[str], data_dir: str | Path) -> None:
    """Fail on unknown task names or missing files before any model is loaded or sentence encoded."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown probe task(s) {unknown}; known: {sorted(TASKS)}")
    for name in tasks:
        for split in ("train", "test"):
            dataset_path(data_dir, TASKS[name].dataset, split)


def probe_tasks(
    encoder: Any,
    tasks: list[str],
    data_dir: str | Path,
    settings: ProbeSettings | None = None,
    cache_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    show_progress: bool = False,
) -> dict[str, dict]:
    """Probe several tasks; tasks on the same dataset share one encoding of its sentences. Results go to
    <output_dir>/probe_results.json when given; word vectors to the cache under `cache_dir`."""
    check_tasks(tasks, data_dir)
    settings = settings or ProbeSettings()
    features: dict[tuple[str, str], tuple[list[Sentence], np.ndarray]] = {}

    def split(dataset: str, name: str, limit: int | None) -> tuple[list[Sentence], np.ndarray, float]:
        """Sentences, word vectors and the seconds spent getting them (0 when shared with a task before)."""
        if (dataset, name) in features:
            return (*features[dataset, name], 0.0)
        sentences = subsample(load_split(data_dir, dataset, name), limit, settings.seed)
        started = time.perf_counter()
        x = cached_word_features(encoder, sentences, f"{dataset}-{name}", settings, cache_dir, show_progress)
        features[dataset, name] = (sentences, x)
        return sentences, x, time.perf_counter() - started

    results = {}
    for name in tasks:
        train, x_train, train_s = split(TASKS[name].dataset, "train", settings.train_limit)
        test, x_test, test_s = split(TASKS[name].dataset, "test", settings.test_limit)
        results[name] = {
            **_run_task(name, train, x_train, test, x_test, settings),
            "encode_s": round(train_s + test_s, 2),
            "sentences": {"train": len(train), "test": len(test)},
            "settings": {
                **asdict(settings),
                "bidirectional": encoder.config.bidirectional,
                "max_length": encoder.config.max_length,
            },
        }
    if output_dir is not None:
        write_results(encoder, results, Path(output_dir) / RESULTS_FILE)
    return results


def probe(
    encoder: Any,
    task: str,
    data_dir: str | Path,
    train_limit: int | None = None,
    test_limit: int | None = None,
    pooling: str = "first",
    shift: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """One probe task -> {"main_score", "scores", "majority_baseline", "settings", timings, counts}.
    `options`: the other ProbeSettings fields, and cache_dir / output_dir / show_progress."""
    names = {f.name for f in fields(ProbeSettings)}
    settings = ProbeSettings(
        pooling, shift, train_limit, test_limit, **{k: v for k, v in options.items() if k in names}
    )
    rest = {k: v for k, v in options.items() if k not in names}
    return probe_tasks(encoder, [task], data_dir, settings, **rest)[task]


def write_results(encoder: Any, results: dict[str, dict], path: Path) -> None:
    """Merge into <path> (same fingerprint only) and write atomically: temp file, then os.replace."""
    fingerprint = encoder.fingerprint()
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = {}
    if report.get("fingerprint") != fingerprint:
        report = {}
    report.update(model=encoder.name_or_path, fingerprint=fingerprint)
    report.setdefault("tasks", {}).update(results)
    write_json_atomic(path, report)


def print_table(results: dict[str, dict], title: str = "word-level probes") -> None:
    """One row per task: main score (accuracy or span F1) beside the majority-class baseline."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE, pad_edge=False)
    for column in ("task", "score", "majority", "words train/test", "encode s", "fit s"):
        table.add_column(column, justify="left" if column == "task" else "right", no_wrap=True)
    for name, r in results.items():
        metric = r["main_metric"]
        table.add_row(
            name,
            f"{100 * r['main_score']:.2f} {'F1' if metric == 'f1' else 'acc'}",
            f"{100 * r['majority_baseline'][metric]:.2f}",
            f"{r['words']['train']:,}/{r['words']['test']:,}",
            f"{r['encode_s']:.1f}",
            f"{r['fit_s']:.1f}",
        )
    Console().print(table)
