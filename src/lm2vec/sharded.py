"""Encode a large corpus in shards: spread over torchrun processes, resumable after a crash.

The input is cut into fixed-size shards (independent of the number of processes, so a re-run with a
different process count still reuses finished work). Shard i belongs to rank i % world; each rank
loads the model once, writes each of its shards atomically to <output>.shards/, and skips shards
already there. Rank 0 then merges them in input order into the output .npy (written to a temp file
and moved into place). A manifest keyed on the texts, the model fingerprint and the encoding settings
makes sure a re-run never mixes in shards of another input or model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import save_npy_atomic, write_json_atomic
from .distributed import barrier

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardPlan:
    directory: Path
    n_texts: int
    shard_size: int

    @property
    def n_shards(self) -> int:
        return max(1, -(-self.n_texts // self.shard_size))

    def rows(self, index: int) -> slice:
        return slice(index * self.shard_size, min(self.n_texts, (index + 1) * self.shard_size))

    def path(self, index: int) -> Path:
        return self.directory / f"shard-{index:06d}.npy"


def shard_dir(output: Path) -> Path:
    return output.with_name(output.name + ".shards")


def run_key(texts: list, fingerprint: str, settings: dict[str, Any]) -> str:
    """What a shard's contents depend on: every text, the weights and settings, the shard size."""
    digest = hashlib.blake2b(json.dumps([fingerprint, settings], sort_keys=True).encode(), digest_size=16)
    for item in texts:
        digest.update(json.dumps(item, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _claim(plan: ShardPlan, key: str) -> None:
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
    write_json_atomic(manifest, {"key": key, "n_texts": plan.n_texts, "shard_size": plan.shard_size})


def _finished(path: Path, rows: int) -> bool:
    """A shard file counts only if it loads with the expected number of rows (writes are atomic)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False).shape[0] == rows
    except (OSError, ValueError):
        return False


def _merge(plan: ShardPlan, output: Path) -> np.ndarray:
    """Concatenate the shards in input order into `output` through a memory map, then rename."""
    first = np.load(plan.path(0), mmap_mode="r", allow_pickle=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    try:
        merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(plan.n_texts, *first.shape[1:]))
        for index in range(plan.n_shards):
            merged[plan.rows(index)] = np.load(plan.path(index), allow_pickle=False)
        merged.flush()
        del merged
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return np.load(output, mmap_mode="r", allow_pickle=False)


def encode_sharded(
    encoder: Any,
    texts: list,
    output: str | os.PathLike,
    shard_size: int = 10_000,
    rank: int = 0,
    world: int = 1,
    keep_shards: bool = False,
    **encode_options: Any,
) -> np.ndarray | None:
    """Encode `texts` into `output` (.npy, input order). Returns the vectors on rank 0, None elsewhere.

    `encode_options` go to `Encoder.encode` (instruction, batch_size, max_tokens, normalize, ...).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not texts:
        raise ValueError("no texts to encode")
    output = Path(output)
    plan = ShardPlan(shard_dir(output), len(texts), shard_size)
    if plan.n_shards == 1 and world == 1:  # nothing to resume: no shard folder, no hash of the weights
        vectors = encoder.encode(texts, **encode_options)
        save_npy_atomic(output, vectors)
        return vectors
    settings = {k: v for k, v in encode_options.items() if k in ("instruction", "normalize")}
    key = run_key(texts, encoder.fingerprint(), {**settings, "shard_size": shard_size})
    if rank == 0:
        _claim(plan, key)
    barrier(world)
    for index in range(rank, plan.n_shards, world):
        rows = plan.rows(index)
        if _finished(plan.path(index), rows.stop - rows.start):
            logger.info("shard %d/%d already done, skipped", index + 1, plan.n_shards)
            continue
        vectors = encoder.encode(texts[rows], **encode_options)
        save_npy_atomic(plan.path(index), vectors)
    barrier(world)
    if rank != 0:
        return None
    merged = _merge(plan, output)
    if not keep_shards:
        shutil.rmtree(plan.directory)
    return merged
