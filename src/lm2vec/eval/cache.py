"""On-disk embedding cache, so that re-running an evaluation (or resuming an interrupted one) never
re-encodes texts the same model has already embedded.

Key: (model fingerprint, task name, sha256 of the instruction and the exact text list). The fingerprint
hashes weights and settings, so a retrained or re-configured model can never hit a stale entry.
The MTEB adapter caches *chunks* of each encode call (a fixed number of texts each), not whole calls:
an encode call of 5,000 documents interrupted after 3,000 resumes with the chunks already on disk.

Each entry is one .npy file written atomically (temp file in the same folder, then os.replace), so a
crash mid-write leaves either no entry or a complete one, never a truncated array.

Why not mteb's `CachedEmbeddingWrapper`: it keys vectors by task, prompt type and text inside a folder
the user names, not by the weights, so a retrained encoder pointed at the same folder silently gets the
old vectors; it cannot serve the word-level probes; and its memmap files are grown in place, not
written atomically. Our key (weights fingerprint + settings + instruction + texts) rules that out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from lm2vec.io import save_npy_atomic


def text_key(texts: list[str], instruction: str | None) -> str:
    """sha256 of the instruction and the texts, unambiguous (JSON keeps text boundaries)."""
    payload = json.dumps([instruction, texts], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()


class EmbeddingCache:
    """Arrays stored as <root>/<fingerprint>/<task>/<sha256>.npy."""

    def __init__(self, root: str | os.PathLike, fingerprint: str) -> None:
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.hits = 0
        self.misses = 0

    def path(self, task: str, texts: list[str], instruction: str | None) -> Path:
        safe_task = re.sub(r"[^\w.-]", "_", task) or "_"
        return self.root / self.fingerprint / safe_task / f"{text_key(texts, instruction)}.npy"

    def get(self, task: str, texts: list[str], instruction: str | None) -> np.ndarray | None:
        """The cached (len(texts), D) array, or None; an unreadable or mis-shaped file counts as a miss."""
        path = self.path(task, texts, instruction)
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            self.misses += 1
            return None
        if array.ndim != 2 or array.shape[0] != len(texts):
            self.misses += 1
            return None
        self.hits += 1
        return array

    def put(self, task: str, texts: list[str], instruction: str | None, array: np.ndarray) -> None:
        """Write atomically: a reader sees the old state or the whole new file."""
        save_npy_atomic(self.path(task, texts, instruction), np.ascontiguousarray(array, dtype=np.float32))
