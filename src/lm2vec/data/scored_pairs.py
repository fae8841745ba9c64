"""Scored sentence pairs (sentence1, sentence2, gold similarity) for dev evaluation while training.

Two formats: the STS Benchmark's own tab-separated files (`sts-dev.csv`: genre, file, year, id,
score, sentence1, sentence2, and on some lines two extra source fields) and JSONL with
`sentence1`, `sentence2` and `score` per line. Malformed lines are errors naming file and line:
a dev set is small and should be right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lm2vec.data.errors import DataError
from lm2vec.data.text import json_object


@dataclass(frozen=True)
class ScoredPairs:
    sentence1: list[str]
    sentence2: list[str]
    scores: list[float]


def _record(where: str, first: object, second: object, score: object) -> tuple[str, str, float]:
    if not (isinstance(first, str) and isinstance(second, str) and first.strip() and second.strip()):
        raise DataError(f"{where}: sentence1 and sentence2 must be non-empty strings")
    try:
        return first, second, float(score)
    except (TypeError, ValueError):
        raise DataError(f"{where}: score must be a number, got {score!r:.40}") from None


def load_scored_pairs(path: str | Path) -> ScoredPairs:
    """Read an STS-Benchmark-style .csv/.tsv file or a JSONL file of scored pairs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dev pairs file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if path.suffix == ".jsonl":
            item = json_object(line, where, "an object with sentence1, sentence2, score")
            rows.append(_record(where, item.get("sentence1"), item.get("sentence2"), item.get("score")))
        else:
            fields = line.split("\t")
            if len(fields) < 7:
                raise DataError(f"{where}: expected >= 7 tab-separated fields (STS Benchmark layout), got {len(fields)}")
            rows.append(_record(where, fields[5], fields[6], fields[4]))
    if len(rows) < 2:
        raise DataError(f"{path}: a dev set needs at least 2 scored pairs, found {len(rows)}")
    first, second, scores = zip(*rows)
    return ScoredPairs(list(first), list(second), list(scores))
