"""Atomic writes: a temp file (or folder) beside the destination, then os.replace.

Readers (and a re-run after a crash) never see a half-written results file, vector array or model
folder. Temp files and folders are created owner-only by `tempfile`; before they move into place
they get the mode a plain `open`/`mkdir` would have given (the umask's), and never a tighter one
than the file they replace, so outputs stay shareable within a team.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _umask() -> int:
    """The process umask: read from /proc on Linux (no side effects), else by setting it and back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shareable_mode(path: Path, directory: bool = False) -> int:
    """Permission bits for a new `path`: the umask's default, or'ed with those of the file it replaces."""
    mode = (0o777 if directory else 0o666) & ~_umask()
    try:
        mode |= stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        pass
    return mode


def temp_path_beside(path: Path) -> str:
    """A new empty temp file in `path`'s folder (same filesystem, so os.replace is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return tmp


def move_into_place(tmp: str | Path, path: Path) -> None:
    """Give a finished temp file its shareable mode, then rename it over `path`."""
    os.chmod(tmp, shareable_mode(path))
    os.replace(tmp, path)


def staging_dir(target: Path, tag: str = "tmp") -> Path:
    """A new folder beside `target`, with the mode `target` will have; fill it, then `replace_dir`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{tag}-"))
    os.chmod(staging, shareable_mode(target, directory=True))
    return staging


def share_tree(folder: Path) -> None:
    """Give every file and folder under `folder` the umask's default mode: libraries that write via
    their own temp files (transformers' safetensors shards) leave them owner-only (0600)."""
    mask = _umask()
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask | (stat.S_IMODE(path.stat().st_mode) & 0o111))


def replace_dir(staging: Path, target: Path) -> None:
    """Move a finished folder into place (every file in it made shareable first); an existing
    target is swapped out, then removed."""
    share_tree(staging)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def write_atomic(path: Path, write: Callable[[IO], None], mode: str = "w") -> None:
    """Call `write(handle)` on a temp file beside `path`, then move it into place."""
    path = Path(path)
    tmp = temp_path_beside(path)
    try:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as handle:
            write(handle)
        move_into_place(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: dict) -> None:
    """Pretty JSON with a trailing newline, written atomically."""
    write_atomic(path, lambda f: f.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n"))


def save_npy_atomic(path: Path, array) -> None:
    """A NumPy array as .npy, written atomically."""
    import numpy as np

    write_atomic(path, lambda f: np.save(f, array, allow_pickle=False), mode="wb")


def write_safetensors_atomic(path: Path, tensors: dict) -> None:
    """A dict of tensors as a .safetensors file, written atomically."""
    from safetensors.torch import save

    payload = save(tensors)
    write_atomic(path, lambda f: f.write(payload), mode="wb")
