"""Encode a large corpus in shards: spread over torchrun processes, resumable after a crash.

Texts are ordered by length (so a shard's texts pad little) and cut into fixed-size shards; by
default a shard is one batch, so Ctrl-C or a crash loses at most one batch of work. The shards do not
depend on the number of processes, so a re-run with another process count reuses finished work.
Shard i belongs to rank i % world; each rank loads the model once, writes each of its shards
atomically to <output>.shards/, and skips shards already there. Rank 0 then merges them back into
input order in the output .npy (a temp file moved into place). A manifest keyed on the texts, the
model fingerprint and the encoding settings makes sure a re-run never mixes in shards of another
input or model. core/ray_encode.py encodes the same shards on Ray Data actors (`--engine ray`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lm2vec.core.distributed import barrier
from lm2vec.io import move_into_place, save_npy_atomic, temp_path_beside, write_json_atomic

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardPlan:
    directory: Path
    n_texts: int
    shard_size: int
    order: np.ndarray  # input row of each position in the length-sorted sequence that shards cut

    @property
    def n_shards(self) -> int:
        return max(1, -(-self.n_texts // self.shard_size))

    def rows(self, index: int) -> np.ndarray:
        """Input rows of shard `index`."""
        return self.order[index * self.shard_size : (index + 1) * self.shard_size]

    def path(self, index: int) -> Path:
        return self.directory / f"shard-{index:06d}.npy"


def length_order(texts: list) -> np.ndarray:
    """Input rows sorted by character length (a free proxy for tokens), stable, so reruns agree."""
    lengths = [len(t) if isinstance(t, str) else sum(len(part or "") for part in t) for t in texts]
    return np.argsort(np.asarray(lengths), kind="stable")


def shard_dir(output: Path) -> Path:
    return output.with_name(output.name + ".shards")


def run_key(texts: list, fingerprint: str, settings: dict[str, Any]) -> str:
    """What a shard's contents depend on: every text, the weights and settings, the shard size."""
    digest = hashlib.blake2b(json.dumps([fingerprint, settings], sort_keys=True).encode(), digest_size=16)
    for item in texts:
        digest.update(json.dumps(item, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def shard_key(texts: list, fingerprint: str, shard_size: int, encode_options: dict[str, Any]) -> str:
    """The manifest key of a sharded run; every engine (torchrun, Ray) computes it alike, so one engine
    can resume what another began."""
    settings = {k: v for k, v in encode_options.items() if k in ("instruction", "normalize")}
    if encode_options.get("dimensions") is not None:  # absent otherwise: earlier runs' shards stay valid
        settings["dimensions"] = encode_options["dimensions"]
    return run_key(texts, fingerprint, {**settings, "shard_size": shard_size, "order": "length"})


def claim_shards(plan: ShardPlan, key: str) -> None:
    """Rank 0: start a new shard folder unless one for exactly this run already exists."""
    manifest = plan.directory / MANIFEST
    try:
        if json.loads(manifest.read_text())["key"] == key:
            return
    except (OSError, ValueError, KeyError):
        pass
    if plan.directory.exists():
        logger.warning("discarding %s: it holds shards of a different input, model or settings", plan.directory)
        shutil.rmtree(plan.directory)
    write_json_atomic(manifest, {"key": key, "n_texts": plan.n_texts, "shard_size": plan.shard_size,
                                 "order": "by character length, stable"})


def shard_finished(path: Path, rows: int) -> bool:
    """A shard file counts only if it loads with the expected number of rows (writes are atomic)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False).shape[0] == rows
    except (OSError, ValueError):
        return False


def merge_shards(plan: ShardPlan, output: Path) -> np.ndarray:
    """Concatenate the shards in input order into `output` through a memory map, then rename."""
    first = np.load(plan.path(0), mmap_mode="r", allow_pickle=False)
    tmp = temp_path_beside(output)
    try:
        merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(plan.n_texts, *first.shape[1:]))
        for index in range(plan.n_shards):
            merged[plan.rows(index)] = np.load(plan.path(index), allow_pickle=False)  # back to input rows
        merged.flush()
        del merged
        move_into_place(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return np.load(output, mmap_mode="r", allow_pickle=False)


def encode_sharded(
    encoder: Any,
    texts: list,
    output: str | os.PathLike,
    shard_size: int | None = None,
    rank: int = 0,
    world: int = 1,
    keep_shards: bool = False,
    show_progress: bool = False,
    **encode_options: Any,
) -> np.ndarray | None:
    """Encode `texts` into `output` (.npy, input order). Returns the vectors on rank 0, None elsewhere.

    `shard_size` (default: the batch size) is the unit of resumable work. `encode_options` go to
    `Encoder.encode` (instruction, batch_size, max_tokens, normalize, dimensions; not int8 / uint8
    `precision`, whose ranges would differ shard by shard: quantize the merged vectors instead).
    """
    shard_size = shard_size or encode_options.get("batch_size", 32)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not texts:
        raise ValueError("no texts to encode")
    output = Path(output)
    plan = ShardPlan(shard_dir(output), len(texts), shard_size, length_order(texts))
    if plan.n_shards == 1 and world == 1:  # nothing to resume: no shard folder, no hash of the weights
        vectors = encoder.encode(texts, show_progress=False, **encode_options)
        save_npy_atomic(output, vectors)
        return vectors
    key = shard_key(texts, encoder.fingerprint(), shard_size, encode_options)
    if rank == 0:
        claim_shards(plan, key)
    barrier(world)
    _encode_own_shards(encoder, texts, plan, rank, world, show_progress, encode_options)
    barrier(world)
    if rank != 0:
        return None
    merged = merge_shards(plan, output)
    if not keep_shards:
        shutil.rmtree(plan.directory)
    return merged


def _encode_own_shards(encoder, texts: list, plan: ShardPlan, rank: int, world: int, show_progress: bool,
                       options: dict) -> None:
    """This rank's shards, skipping finished ones; one progress bar in texts and one truncation warning."""
    from tqdm.auto import tqdm

    from lm2vec.core.encoder import TruncationWarning

    own = range(rank, plan.n_shards, world)
    with tqdm(total=sum(len(plan.rows(i)) for i in own), desc="encode", unit="text", disable=not show_progress,
              dynamic_ncols=True) as bar, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncationWarning)
        for index in own:
            rows = plan.rows(index)
            if not shard_finished(plan.path(index), len(rows)):
                vectors = encoder.encode([texts[i] for i in rows], show_progress=False, **options)
                save_npy_atomic(plan.path(index), vectors)
            bar.update(len(rows))
        truncated = [w.message for w in caught if isinstance(w.message, TruncationWarning)]
        others = [w for w in caught if not isinstance(w.message, TruncationWarning)]
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if truncated:
        total = sum(len(plan.rows(i)) for i in own)
        warnings.warn(TruncationWarning(sum(t.count for t in truncated), total, truncated[0].max_length), stacklevel=3)
