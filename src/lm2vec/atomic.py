"""Atomic file writes: a temp file in the destination folder, then os.replace.

Readers (and a re-run after a crash) never see a half-written results file or vector array.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: Path, write: Callable[[IO], None], mode: str = "w") -> None:
    """Call `write(handle)` on a temp file beside `path`, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: dict) -> None:
    """Pretty JSON with a trailing newline, written atomically."""
    write_atomic(path, lambda f: f.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n"))


def save_npy_atomic(path: Path, array) -> None:
    """A NumPy array as .npy, written atomically."""
    import numpy as np

    write_atomic(path, lambda f: np.save(f, array), mode="wb")


def write_safetensors_atomic(path: Path, tensors: dict) -> None:
    """A dict of tensors as a .safetensors file, written atomically."""
    from safetensors.torch import save

    payload = save(tensors)
    write_atomic(path, lambda f: f.write(payload), mode="wb")
