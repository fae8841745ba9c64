"""`lm2vec encode --engine ray`: the shards of core/sharded.py, encoded by Ray Data actors.

Each actor loads the Encoder once (one model per actor: a GPU of its own when the cluster has GPUs,
else the CPU) and `map_batches` hands it one shard at a time. The vectors come back to this process,
which writes each shard as it arrives (so workers need no shared filesystem) and merges them into
input order at the end: the same shard plan, manifest key and output as the torchrun path, so a run
killed under one engine resumes under either, re-encoding only the shards not yet written.

Ray is an optional extra (`pip install 'lm2vec[ray]'`). Without `address` a local Ray is started here
and stopped at the end; with it (`auto`, `ray://head:10001`, ...) the work runs on that cluster, whose
workers need torch and transformers installed; this process's lm2vec is shipped to them (py_modules).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lm2vec.core.loading import MissingPackageError
from lm2vec.core.sharded import (
    ShardPlan,
    claim_shards,
    length_order,
    merge_shards,
    shard_dir,
    shard_finished,
    shard_key,
)
from lm2vec.io import save_npy_atomic

logger = logging.getLogger(__name__)
PACKAGE = Path(__file__).resolve().parents[1]  # src/lm2vec


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: a local Ray, started and stopped by this call
    workers: int | None = None  # actors, one model each; default: one per GPU of the cluster, else 1
    gpus_per_worker: float | None = None  # default: 1 when the cluster has GPUs, else 0 (CPU actors)
    cpus_per_worker: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """How an actor loads the encoder: `Encoder.from_pretrained` arguments (sent to workers, not the model)."""

    name_or_path: str
    kwargs: dict[str, Any] = field(default_factory=dict)  # pooling, max_length, dtype, model_kwargs, ...

    def load(self, use_gpu: bool):
        from lm2vec.core.encoder import Encoder

        return Encoder.from_pretrained(self.name_or_path, device="cuda" if use_gpu else "cpu", **self.kwargs)


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingPackageError("--engine ray needs Ray Data: pip install 'lm2vec[ray]' (or 'ray[data]')") from None
    return ray


class ShardEncoder:
    """A Ray Data actor: the encoder loaded once, then shards (their texts as JSON) in, .npy bytes out."""

    def __init__(self, spec: ModelSpec, options: dict, use_gpu: bool) -> None:
        self.encoder, self.options = spec.load(use_gpu), options

    def __call__(self, batch: dict) -> dict:
        from lm2vec.core.encoder import TruncationWarning

        blobs, cut = [], []
        for payload in batch["texts"]:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", TruncationWarning)
                vectors = self.encoder.encode(json.loads(payload), show_progress=False, **self.options)
            cut.append(sum(w.message.count for w in caught if isinstance(w.message, TruncationWarning)))
            buffer = io.BytesIO()
            np.save(buffer, vectors, allow_pickle=False)
            blobs.append(buffer.getvalue())
        return {"shard": np.asarray(batch["shard"]), "npy": np.array(blobs, dtype=object), "truncated": np.array(cut)}


def _fingerprint(spec: ModelSpec, use_gpu: bool) -> tuple[str, int]:
    """Runs on a worker: the weights' fingerprint for the manifest key, and max_length (the model never
    comes to the driver)."""
    encoder = spec.load(use_gpu)
    return encoder.fingerprint(), encoder.config.max_length


def start_ray(options: RayOptions) -> bool:
    """Connect to `options.address`, or start a local Ray; False if this process was connected already."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if options.address:  # ship this lm2vec to the workers: the same code on both sides of the wire
        ray.init(address=options.address, runtime_env={"py_modules": [str(PACKAGE)]}, log_to_driver=False)
        return True
    needed = (options.workers or 1) * options.cpus_per_worker + 1  # + 1 for Ray Data's own small tasks
    # "local": always a new instance, never a cluster that `ray start` left (or its stale address file)
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(np.ceil(needed))), include_dashboard=False,
             log_to_driver=False)
    return True


def _placement(options: RayOptions) -> tuple[int, float]:
    """(actors, GPUs per actor) from the options and what the cluster holds."""
    ray = import_ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    per_worker = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    workers = options.workers or (max(1, int(gpus // per_worker)) if per_worker else 1)
    return workers, per_worker


@dataclass
class _Run:
    """One `encode_with_ray` call: what to encode, where the shards go, how actors load the model."""

    spec: ModelSpec
    texts: list
    plan: ShardPlan
    encode_options: dict

    def todo(self) -> list[int]:
        return [i for i in range(self.plan.n_shards) if not shard_finished(self.plan.path(i), len(self.plan.rows(i)))]

    def dataset(self, ray, todo: list[int], workers: int, gpus: float, cpus: float):
        """One row (and block) per unfinished shard, mapped by a pool of `workers` ShardEncoder actors."""
        rows = [{"shard": i, "texts": json.dumps([self.texts[r] for r in self.plan.rows(i)])} for i in todo]
        return ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            ShardEncoder, fn_constructor_kwargs={"spec": self.spec, "options": self.encode_options, "use_gpu": gpus > 0},
            batch_size=1, concurrency=min(workers, len(rows)), num_gpus=gpus, num_cpus=cpus)

    def collect(self, dataset, todo: list[int], show_progress: bool, on_shard: Callable[[int], None] | None) -> int:
        """Write each shard as it comes back; returns how many texts the actors had to truncate."""
        from tqdm.auto import tqdm

        truncated = 0
        with tqdm(total=sum(len(self.plan.rows(i)) for i in todo), desc="encode", unit="text",
                  disable=not show_progress, dynamic_ncols=True) as bar:
            for row in dataset.iter_rows():
                index = int(row["shard"])
                save_npy_atomic(self.plan.path(index), np.load(io.BytesIO(row["npy"]), allow_pickle=False))
                truncated += int(row["truncated"])
                bar.update(len(self.plan.rows(index)))
                if on_shard is not None:
                    on_shard(index)
        return truncated


def encode_with_ray(
    spec: ModelSpec,
    texts: list,
    output: str | os.PathLike,
    shard_size: int = 32,
    options: RayOptions | None = None,
    keep_shards: bool = False,
    show_progress: bool = False,
    on_shard: Callable[[int], None] | None = None,
    **encode_options: Any,
) -> np.ndarray:
    """Encode `texts` into `output` (.npy, input order) on Ray actors and return the vectors (memory-mapped).

    `shard_size` texts make one unit of resumable work and one actor call; `encode_options` go to
    `Encoder.encode` (instruction, batch_size, max_tokens, normalize); `on_shard(i)` runs after shard i is
    written. A re-run after a crash or kill encodes only the shards not written yet.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not texts:
        raise ValueError("no texts to encode")
    options, output = options or RayOptions(), Path(output)
    run = _Run(spec, texts, ShardPlan(shard_dir(output), len(texts), shard_size, length_order(texts)), encode_options)
    ray = import_ray()
    started = start_ray(options)
    try:
        workers, gpus = _placement(options)
        task = ray.remote(_fingerprint).options(num_gpus=gpus, num_cpus=options.cpus_per_worker)
        fingerprint, max_length = ray.get(task.remote(spec, gpus > 0))
        claim_shards(run.plan, shard_key(texts, fingerprint, shard_size, encode_options))
        todo = run.todo()
        logger.info("ray: %d of %d shards to encode on %d actors", len(todo), run.plan.n_shards, workers)
        if todo:
            dataset = run.dataset(ray, todo, workers, gpus, options.cpus_per_worker)
            truncated = run.collect(dataset, todo, show_progress, on_shard)
            _warn_truncated(truncated, sum(len(run.plan.rows(i)) for i in todo), max_length)
    finally:
        if started:
            ray.shutdown()
    merged = merge_shards(run.plan, output)
    if not keep_shards:
        shutil.rmtree(run.plan.directory)
    return merged


def _warn_truncated(count: int, total: int, max_length: int) -> None:
    """The actors' truncations as the one warning a single-process encode gives."""
    if count:
        from lm2vec.core.encoder import TruncationWarning

        warnings.warn(TruncationWarning(count, total, max_length), stacklevel=3)
