"""Evaluation: MTEB (eval/mteb.py, the only module that imports mteb) and local benchmark data.

Imports are lazy so that `import lm2vec.eval` stays cheap and works without mteb installed;
`evaluate` and `MTEBEncoder` load mteb on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MTEBEncoder", "evaluate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lm2vec.eval import mteb as _mteb

        return getattr(_mteb, name)
    raise AttributeError(f"module 'lm2vec.eval' has no attribute {name!r}")
