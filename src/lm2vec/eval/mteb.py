"""MTEB evaluation of an lm2vec Encoder: the only module in the package that imports mteb (2.x).

Two halves:
- `MTEBEncoder` speaks mteb's EncoderProtocol: it gathers the texts of mteb's DataLoader, picks the
  LLM2Vec instruction for the task (never for retrieval documents), encodes through the embedding
  cache, and declares cosine similarity in its ModelMeta.
- `evaluate` builds mteb's own task objects, either from the hub (online) or filled from the local
  data pack (offline, `data_dir`), and lets mteb's evaluators compute every score. We never compute a
  metric ourselves: main scores are exactly what mteb reports.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mteb
import numpy as np
from datasets import Dataset, DatasetDict
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.similarity_functions import cos_sim, pairwise_cos_sim

from lm2vec.eval.cache import EmbeddingCache
from lm2vec.eval.local_data import UnknownTaskError, check_local_task, load_local
from lm2vec.eval.mteb_instructions import load_instructions, select_instruction
from lm2vec.io import write_json_atomic

RESULTS_FILE = "mteb_results.json"
# Splits to score offline when they differ from mteb 2.x's metadata. mteb 1.x (and the README) scored
# Emotion on validation and test; mteb 2.x scores test only. We score both; the main score stays test's.
LOCAL_EVAL_SPLITS = {"EmotionClassification": ["validation", "test"]}


class MTEBEncoder:
    """Adapter from an lm2vec encoder (`encode(texts, instruction=...)`, `name_or_path`,
    `fingerprint()`) to mteb's EncoderProtocol."""

    def __init__(
        self,
        encoder: Any,
        instructions: dict[str, str] | None = None,
        cache: EmbeddingCache | None = None,
        batch_size: int = 32,
        chunk_size: int = 512,
    ) -> None:
        self.encoder = encoder
        self.instructions = load_instructions() if instructions is None else instructions
        self.cache = cache
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.used_instructions: dict[str, str | None] = {}  # task -> query-side instruction, for reports
        self._meta: ModelMeta | None = None

    @property
    def mteb_model_meta(self) -> ModelMeta:
        if self._meta is None:
            self._meta = model_meta(self.encoder)
        return self._meta

    def instruction_for(self, task_metadata: Any, prompt_type: Any = None) -> str | None:
        """LLM2Vec practice: instruction on queries and on symmetric inputs (prompt_type None), never
        on retrieval documents."""
        kind = getattr(prompt_type, "value", prompt_type)
        return select_instruction(self.instructions, task_metadata.name, kind, task_metadata.prompt)

    def encode(
        self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs
    ) -> np.ndarray:
        """All texts of mteb's batches in order -> float32 array (n, D)."""
        texts = [text for batch in inputs for text in batch["text"]]
        instruction = self.instruction_for(task_metadata, prompt_type)
        if getattr(prompt_type, "value", prompt_type) != "document":
            self.used_instructions[task_metadata.name] = instruction
        return self.embed(texts, instruction, task_metadata.name, kwargs.get("batch_size") or self.batch_size)

    def embed(self, texts: list[str], instruction: str | None, task: str, batch_size: int) -> np.ndarray:
        """Encode in fixed-size chunks, each looked up in / written to the cache (resumable runs)."""
        parts = []
        for start in range(0, max(len(texts), 1), self.chunk_size):
            chunk = texts[start : start + self.chunk_size]
            cached = self.cache.get(task, chunk, instruction) if self.cache else None
            if cached is None:
                cached = np.asarray(
                    self.encoder.encode(chunk, instruction=instruction, batch_size=batch_size),
                    dtype=np.float32,
                )
                if self.cache:
                    self.cache.put(task, chunk, instruction, cached)
            parts.append(cached)
        return np.concatenate(parts, axis=0)

    def similarity(self, embeddings1, embeddings2):
        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        return pairwise_cos_sim(embeddings1, embeddings2)


def model_meta(encoder: Any) -> ModelMeta:
    """What mteb records about the model; the revision is the weights' fingerprint.

    mteb requires an 'organization/name' form, so built-in names such as 'smollm2-135m' get 'lm2vec/'."""
    config = getattr(encoder, "config", None)
    params = getattr(encoder, "parameters", None)
    name = getattr(encoder, "name_or_path", "") or "encoder"
    return ModelMeta(
        loader=None,
        name=name if "/" in name else f"lm2vec/{name}",
        revision=encoder.fingerprint(),
        release_date=None,
        languages=None,
        n_parameters=sum(p.numel() for p in params()) if callable(params) else None,
        memory_usage_mb=None,
        max_tokens=getattr(config, "max_length", None),
        embed_dim=getattr(encoder, "embedding_dim", None),
        license=None,
        open_weights=None,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch", "Transformers"],
        similarity_fn_name=ScoringFunction.COSINE,
        use_instructions=True,
        training_datasets=None,
    )


# ---- tasks --------------------------------------------------------------------------------------
def _to_datasets(splits: dict[str, dict]) -> Any:
    """Plain columns -> what mteb's task classes hold: a DatasetDict, or per split a retrieval dict."""
    if all("corpus" in cols for cols in splits.values()):
        return {
            split: {
                "corpus": Dataset.from_dict(cols["corpus"]),
                "queries": Dataset.from_dict(cols["queries"]),
                "relevant_docs": cols["qrels"],
                "top_ranked": None,
            }
            for split, cols in splits.items()
        }
    return DatasetDict({split: Dataset.from_dict(cols) for split, cols in splits.items()})


def _subsample(columns: dict, limit: int, seed: int = 0) -> dict:
    """A fixed random sample of `limit` rows (same rows every run), for CPU-sized benchmarks."""
    lengths = {len(v) for v in columns.values() if isinstance(v, list)}
    if len(lengths) != 1 or lengths.pop() <= limit:
        return columns
    n = len(next(v for v in columns.values() if isinstance(v, list)))
    keep = sorted(random.Random(seed).sample(range(n), limit))
    return {k: [v[i] for i in keep] if isinstance(v, list) else v for k, v in columns.items()}


def local_task(name: str, data_dir: str | os.PathLike, limit: int | None = None) -> mteb.AbsTask:
    """mteb's own task object with `dataset` filled from the local files instead of the hub.

    `limit` caps every evaluation split (never a training split) at a fixed sample of that many rows.
    """
    subsets = load_local(name, data_dir)
    if limit:
        subsets = {sub: {split: cols if split == "train" or "corpus" in cols else _subsample(cols, limit)
                         for split, cols in splits.items()} for sub, splits in subsets.items()}
    task = mteb.get_task(name, eval_splits=LOCAL_EVAL_SPLITS.get(name), hf_subsets=list(subsets))
    task.dataset = {subset: _to_datasets(splits) for subset, splits in subsets.items()}
    task.hf_subsets = list(subsets)
    task.data_loaded = True  # mteb then skips load_data (the hub download)
    return task


def check_task_names(names: Sequence[str], data_dir: str | os.PathLike | None) -> None:
    """Fail on an unknown task name before a model loads: local names offline, mteb's registry otherwise."""
    if not names:
        raise ValueError("no task given; e.g. --tasks STSBenchmark")
    for name in names:
        if data_dir is not None:
            check_local_task(name)
        else:
            try:
                mteb.get_task(name)
            except KeyError as error:
                raise UnknownTaskError(f"unknown mteb task {name!r}: {str(error).strip(chr(34))}") from None


def get_tasks(
    names: Sequence[str], data_dir: str | os.PathLike | None, limit: int | None = None
) -> list[mteb.AbsTask]:
    """Offline tasks from `data_dir`, else mteb's hub-backed tasks (downloaded on first use)."""
    if data_dir is None:
        if limit:
            raise ValueError("limit applies to local data only (--data-dir)")
        return list(mteb.get_tasks(tasks=list(names)))
    return [local_task(name, data_dir, limit) for name in names]


# ---- running and reporting ------------------------------------------------------------------------
def _finite(value: Any) -> float | None:
    """JSON has no NaN: a metric mteb could not compute (AP of a multi-class task) becomes null."""
    value = float(value)
    return value if math.isfinite(value) else None


def summarize(task: mteb.AbsTask, result: mteb.TaskResult) -> dict[str, Any]:
    """mteb's main score (test split when scored, averaged over subsets as mteb does) and all scalars."""
    scores = {
        split: {
            entry["hf_subset"]: {
                k: _finite(v)
                for k, v in entry.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            for entry in entries
        }
        for split, entries in result.scores.items()
    }
    return {
        "main_score": _finite(result.get_score(splits=["test"] if "test" in result.scores else None)),
        "main_metric": task.metadata.main_score,
        "scores": scores,
        "evaluation_time_s": result.evaluation_time,
    }


def _previous_report(path: Path, fingerprint: str) -> dict[str, Any]:
    """Results of earlier runs of the same model, so that tasks accumulate across invocations."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return report if report.get("fingerprint") == fingerprint else {}


def print_table(results: dict[str, dict[str, Any]], title: str = "MTEB") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("task", "metric", "score"):
        table.add_column(column, justify="right" if column == "score" else "left")
    for name, r in results.items():
        score = "n/a" if r["main_score"] is None else f"{100 * r['main_score']:.2f}"
        table.add_row(name, r["main_metric"], score)
    Console().print(table)


def run_task(model: MTEBEncoder, task: mteb.AbsTask, batch_size: int) -> dict[str, Any]:
    """One task through mteb.evaluate; mteb's own result cache is off (ours keys on the fingerprint)."""
    run = mteb.evaluate(
        model,
        task,
        cache=None,
        encode_kwargs={"batch_size": batch_size},
        overwrite_strategy="always",
        co2_tracker=False,
        show_progress_bar=False,
    )
    return summarize(task, run.task_results[0])


def evaluate(
    encoder: Any,
    tasks: Sequence[str],
    data_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike = "results",
    instructions_file: str | os.PathLike | None = None,
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    limit: int | None = None,
    n_experiments: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Run mteb on `tasks`; returns {task: {"main_score", "main_metric", "scores", ...}}.

    Offline when `data_dir` is given (the local data pack), else mteb downloads from the hub. Results go
    to <output_dir>/mteb_results.json after every task (atomically, merged with earlier runs of the same
    fingerprint); embeddings to <cache_dir, default output_dir/embedding_cache>. `n_experiments` overrides
    how many classifier fits (each on a fresh few-shot train sample) classification tasks average over;
    fewer means fewer training texts to encode, at the price of a noisier score.
    """
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    output, fingerprint = Path(output_dir), encoder.fingerprint()
    cache = EmbeddingCache(cache_dir or output / "embedding_cache", fingerprint) if use_cache else None
    model = MTEBEncoder(encoder, load_instructions(instructions_file), cache, batch_size)
    task_objects = get_tasks(tasks, data_dir, limit)  # fail on unknown names before any encoding
    source = "hub" if data_dir is None else f"local:{Path(data_dir).resolve()}"
    source += f" (evaluation splits sampled to {limit} rows)" if limit else ""
    for task in task_objects:
        if n_experiments and hasattr(task, "n_experiments"):
            task.n_experiments = n_experiments
    report = _previous_report(output / RESULTS_FILE, fingerprint)
    report.update(model=model.mteb_model_meta.name, fingerprint=fingerprint, mteb_version=mteb.__version__)
    results = {}
    for task in task_objects:
        name = task.metadata.name
        results[name] = {**run_task(model, task, batch_size), "data": source}
        if hasattr(task, "n_experiments"):
            results[name]["n_experiments"] = task.n_experiments
        report.setdefault("tasks", {})[name] = results[name]
        report.setdefault("instructions", {})[name] = model.used_instructions.get(name)
        write_json_atomic(output / RESULTS_FILE, report)
    print_table(results, title=f"MTEB: {report['model']}")
    return results
