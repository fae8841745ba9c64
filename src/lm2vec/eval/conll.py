"""CoNLL-2003 / CoNLL-2000 files and their scoring: the data side of the word-level probes.

Format (shared/data/README.md): one token per line, `word POS chunk NER` (CoNLL-2003) or `word POS chunk`
(CoNLL-2000), a blank line between sentences, `-DOCSTART- -X- -X- O` lines between documents (skipped,
they are not text). Chunk and NER tags are IOB2. A malformed line is reported as `file:line: reason`
(DataError), never dropped silently: a shifted column would quietly corrupt every score.

Entity F1 follows conlleval / seqeval's default mode: a span is (type, start, end) and counts only on an
exact match; an `I-X` that does not continue an `X` span starts a new one (what conlleval does with the
invalid sequences a per-word classifier can produce).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lm2vec.data.errors import OnError, Problems

DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class CoNLLDataset:
    """Where a dataset lives under the data pack and what its tag columns are."""

    folder: str
    columns: tuple[str, ...]  # tag columns after the word
    test_split: str = "test"


DATASETS: dict[str, CoNLLDataset] = {
    "conll2003": CoNLLDataset("CoNLL-2003", ("pos", "chunk", "ner")),
    "conll2000": CoNLLDataset("CoNLL-2000", ("pos", "chunk")),
}
IOB_COLUMNS = ("chunk", "ner")


@dataclass(frozen=True)
class Sentence:
    """One sentence: its words and one tag sequence per column (same length as words)."""

    words: tuple[str, ...]
    tags: dict[str, tuple[str, ...]]


def _check_tag(tag: str, column: str) -> str | None:
    """Why an IOB2 tag is malformed, or None."""
    if column in IOB_COLUMNS and tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
        return f"{column} tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)"
    return None


def _parse_line(line: str, columns: tuple[str, ...]) -> tuple[list[str] | None, str | None]:
    """Fields of one token line, or the reason it is malformed."""
    fields = line.split()
    if len(fields) != 1 + len(columns):
        expected = " ".join(("word", *columns))
        return None, f"expected {1 + len(columns)} fields '{expected}', got {len(fields)}: {line!r:.80}"
    for tag, column in zip(fields[1:], columns):
        reason = _check_tag(tag, column)
        if reason:
            return None, reason
    return fields, None


def read_conll(path: str | Path, columns: tuple[str, ...], on_error: OnError = "raise") -> list[Sentence]:
    """Sentences of a CoNLL file; -DOCSTART- lines end the current sentence and are skipped."""
    path = Path(path)
    problems = Problems(on_error)
    sentences: list[Sentence] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if rows:
            tags = {c: tuple(r[i + 1] for r in rows) for i, c in enumerate(columns)}
            sentences.append(Sentence(tuple(r[0] for r in rows), tags))
            rows.clear()

    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.split(maxsplit=1)[0] == DOCSTART:
                flush()
                continue
            fields, reason = _parse_line(line, columns)
            if reason:
                problems.report(f"{path}:{number}", reason)
            else:
                rows.append(fields)
    flush()
    problems.finish(str(path))
    return sentences


def dataset_path(data_dir: str | Path, dataset: str, split: str) -> Path:
    """<data_dir>/word/<folder>/<split>.txt (data_dir may also be the word/ folder or the dataset's)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown CoNLL dataset {dataset!r}; known: {sorted(DATASETS)}")
    root, folder = Path(data_dir), DATASETS[dataset].folder
    candidates = [root / "word" / folder, root / folder, root]
    for candidate in candidates:
        if (candidate / f"{split}.txt").is_file():
            return candidate / f"{split}.txt"
    raise FileNotFoundError(f"{split}.txt of {folder} not found under {root} (looked in {candidates[0]})")


def load_split(data_dir: str | Path, dataset: str, split: str) -> list[Sentence]:
    """Read one split of a known dataset from the data pack."""
    return read_conll(dataset_path(data_dir, dataset, split), DATASETS[dataset].columns)


# ---- scoring ----------------------------------------------------------------------------------------
def _seqeval():
    try:
        import seqeval.metrics
        import seqeval.metrics.sequence_labeling
    except ImportError as error:
        raise ImportError("span F1 needs seqeval: pip install 'lm2vec[eval]'") from error
    return seqeval.metrics


def iob_spans(tags: list[str] | tuple[str, ...]) -> set[tuple[str, int, int]]:
    """Spans (type, start, end exclusive) of an IOB2 sequence, conlleval-style (seqeval's reading:
    an I- tag that does not continue a span of its type opens one)."""
    found = _seqeval().sequence_labeling.get_entities(list(tags))
    return {(kind, start, end + 1) for kind, start, end in found}


def span_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Micro precision / recall / F1 of exact span matches over sentences (seqeval; 0 where undefined)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    for g, p in zip(gold, predicted):
        if len(g) != len(p):
            raise ValueError(f"sentence of {len(g)} gold tags but {len(p)} predicted")
    gold, predicted = [list(g) for g in gold], [list(p) for p in predicted]
    metrics = _seqeval()
    return {name: float(score(gold, predicted, zero_division=0)) for name, score in
            (("precision", metrics.precision_score), ("recall", metrics.recall_score), ("f1", metrics.f1_score))}


def tag_scores(gold: list[list[str]], predicted: list[list[str]], spans: bool) -> dict[str, float]:
    """Word accuracy, plus exact-span precision / recall / F1 when the tags are IOB2 (`spans`)."""
    pairs = [(g, p) for gs, ps in zip(gold, predicted, strict=True) for g, p in zip(gs, ps, strict=True)]
    scores = {"accuracy": sum(g == p for g, p in pairs) / len(pairs) if pairs else 0.0}
    return {**scores, **span_scores(gold, predicted)} if spans else scores


__all__ = [
    "DATASETS",
    "Sentence",
    "dataset_path",
    "iob_spans",
    "load_split",
    "read_conll",
    "span_scores",
    "tag_scores",
]
