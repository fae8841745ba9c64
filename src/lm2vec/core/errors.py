"""What the Encoder reports about its files and inputs: broken checkpoint folders (an error naming the
broken file) and truncated texts (one warning per call, with counts that callers can add up).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from lm2vec.core.tokenization import TokenizedText


class CheckpointError(RuntimeError):
    """A model folder whose files are missing, truncated or corrupt."""


@contextlib.contextmanager
def checkpoint_errors(folder: str):
    """Turn a loader's error about a broken local folder into one that names the broken file."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError) as error:
        if not Path(folder).is_dir():
            raise
        broken = [p.name for p in sorted(Path(folder).glob("*.safetensors")) if not _readable_safetensors(p)]
        what = f"{', '.join(broken)} is truncated or corrupt" if broken else f"it is not a complete model folder ({error})"
        raise CheckpointError(f"cannot load {folder}: {what}; save, train or download it again") from None


def _readable_safetensors(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                handle.get_slice(key)
        return True
    except Exception:
        return False


class TruncationWarning(UserWarning):
    """Some texts were cut to max_length; `count` of `total` (callers that encode in parts add them up)."""

    def __init__(self, count: int, total: int, max_length: int) -> None:
        super().__init__(f"{count} of {total} texts were longer than max_length={max_length} tokens and were truncated")
        self.count, self.total, self.max_length = count, total, max_length


def warn_truncated(tokenized: list[TokenizedText], max_length: int) -> None:
    """One warning for the whole call, saying how many texts were cut."""
    count = sum(t.truncated for t in tokenized)
    if count:
        warnings.warn(TruncationWarning(count, len(tokenized), max_length), stacklevel=3)
