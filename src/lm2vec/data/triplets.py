"""Supervised contrastive data: ``(query, positive, hard negatives, instruction)`` triplets.

LLM2Vec's supervised stage trains with InfoNCE on a query, one positive and optional hard
negatives, with a task instruction prepended to the query only (E5 style). Every source here
becomes a list of :class:`Triplet`: our own JSONL and CSV/TSV formats, SNLI 1.0, a BEIR-style
MS MARCO folder and WikiSplit. Formats and examples: ``docs/data-formats.md``; malformed records
follow the shared ``on_error`` policy of :mod:`lm2vec.data.errors`.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lm2vec.data.errors import DataError, OnError, Problems
from lm2vec.data.text import detect_format, iter_jsonl, iter_lines, iter_table, json_type, string_field

# Task instructions as used for these datasets in LLM2Vec's E5 training mix.
NLI_INSTRUCTION = "Given a premise, retrieve a hypothesis that is entailed by the premise"
MSMARCO_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
SIMILAR_INSTRUCTION = "Retrieve semantically similar text"
TRIPLET_FORMATS: tuple[str, ...] = ("jsonl", "csv", "tsv")
SNLI_PAIRINGS: tuple[str, ...] = ("all", "per_entailment", "per_premise")
Pairing = Literal["all", "per_entailment", "per_premise"]


@dataclass
class Triplet:
    """One training example; ``instruction`` (if any) is prepended to the query only."""

    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    instruction: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSONL record of this triplet (keys ``query, positive, negatives, instruction``)."""
        record = asdict(self)
        return (
            record
            if self.instruction is not None
            else {k: v for k, v in record.items() if k != "instruction"}
        )


# ----------------------------------------------------------------------------- our own formats


def load_triplets(
    path: str | os.PathLike[str], *, fmt: str | None = None, on_error: OnError = "skip"
) -> list[Triplet]:
    """Read triplets from JSONL or CSV/TSV (optionally gzipped), in file order.

    JSONL: ``{"query", "positive", "negatives"?: [str], "instruction"?: str}`` per line
    (``"negative": str`` is accepted for a single hard negative). CSV/TSV: a header with
    ``query`` and ``positive``, optional ``negative`` (or ``negative_1``, ``negative_2``, ...)
    columns whose empty cells mean "none", and an optional ``instruction`` column.
    """
    path = _existing(path)
    fmt = fmt or detect_format(path)
    if fmt not in TRIPLET_FORMATS:
        raise DataError(f"{path}: triplets must be one of {', '.join(TRIPLET_FORMATS)}, not {fmt!r}")
    problems = Problems(on_error)
    records = _jsonl_triplets(path, problems) if fmt == "jsonl" else _table_triplets(path, fmt, problems)
    triplets = list(records)
    problems.finish(str(path))
    return triplets


def save_triplets(triplets: list[Triplet], path: str | os.PathLike[str]) -> None:
    """Write triplets in the JSONL format that :func:`load_triplets` reads (UTF-8, one per line)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(triplet.to_dict(), ensure_ascii=False) + "\n" for triplet in triplets)


def _jsonl_triplets(path: Path, problems: Problems) -> Iterator[Triplet]:
    for where, record in iter_jsonl(path, problems):
        triplet, reason = triplet_from_record(record)
        if triplet is None:
            problems.report(where, reason or "malformed triplet")
        else:
            yield triplet


def triplet_from_record(record: dict[str, Any]) -> tuple[Triplet | None, str | None]:
    """Validate one JSON object; returns ``(triplet, None)`` or ``(None, reason)``."""
    query, bad_query = string_field(record, "query")
    positive, bad_positive = string_field(record, "positive")
    negatives, bad_negatives = _negatives(record)
    instruction = record.get("instruction")
    bad_instruction = (
        None
        if instruction is None or isinstance(instruction, str)
        else f"field 'instruction' is {json_type(instruction)}, not a string"
    )
    reason = bad_query or bad_positive or bad_negatives or bad_instruction
    if reason:
        return None, reason
    return Triplet(query, positive, negatives, instruction or None), None


def _negatives(record: dict[str, Any]) -> tuple[list[str], str | None]:
    """The hard negatives: ``negatives`` (list of strings), or a single ``negative`` string."""
    if "negatives" not in record and "negative" in record:
        text, reason = string_field(record, "negative")
        return ([text], None) if not reason else ([], reason)
    values = record.get("negatives") or []
    if not isinstance(values, list):
        return [], f"field 'negatives' is {json_type(values)}, not an array"
    for index, value in enumerate(values):
        if not isinstance(value, str):
            return [], f"negatives[{index}] is {json_type(value)}, not a string"
        if not value.strip():
            return [], f"empty negatives[{index}]"
    return values, None


def _table_triplets(path: Path, fmt: str, problems: Problems) -> Iterator[Triplet]:
    for _, row in iter_table(path, problems, fmt, ["query", "positive"]):
        negatives = [row[name] for name in row if name.startswith("negative") and row[name].strip()]
        yield Triplet(row["query"], row["positive"], negatives, row.get("instruction") or None)


def _existing(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    return path


# ----------------------------------------------------------------------------- SNLI 1.0


def snli_triplets(
    path: str | os.PathLike[str],
    *,
    pairing: Pairing = "all",
    instruction: str | None = NLI_INSTRUCTION,
    on_error: OnError = "skip",
) -> list[Triplet]:
    """(premise, entailment, contradiction) triplets from SNLI 1.0 ``.jsonl(.gz)`` file(s).

    Rows are grouped by ``sentence1``; neutral and ``-`` (no gold majority) rows are dropped, as
    SimCSE does. ``pairing="all"`` gives every entailment x contradiction combination of a premise
    (the data README's recipe: 3,256 dev + 3,247 test); ``"per_entailment"`` one triplet per
    entailment, cycling through the contradictions (3,172 + 3,167); ``"per_premise"`` only the first
    pair (2,943 + 2,921). A directory means its ``snli_1.0_*.jsonl*`` files, in sorted order.
    """
    if pairing not in SNLI_PAIRINGS:
        raise DataError(f"pairing must be one of {SNLI_PAIRINGS}, got {pairing!r}")
    problems = Problems(on_error)
    triplets = [
        triplet
        for file in _snli_files(_existing(path))
        for premise, labels in _snli_groups(file, problems).items()
        for triplet in _pair_up(premise, labels["entailment"], labels["contradiction"], pairing, instruction)
    ]
    problems.finish(str(path))
    return triplets


def _snli_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("snli_1.0_*.jsonl*"))
    if not files:
        raise DataError(f"{path}: no snli_1.0_*.jsonl[.gz] files in this directory")
    return files


def _snli_groups(path: Path, problems: Problems) -> dict[str, dict[str, list[str]]]:
    """premise -> label -> hypotheses, in order of first appearance."""
    groups: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for where, record in iter_jsonl(path, problems):
        fields = [string_field(record, key) for key in ("gold_label", "sentence1", "sentence2")]
        reason = next((reason for _, reason in fields if reason), None)
        label, premise, hypothesis = (value for value, _ in fields)
        if reason is None and label not in ("entailment", "neutral", "contradiction", "-"):
            reason = f"unknown gold_label {label!r}"
        if reason:
            problems.report(where, reason)
        elif label in ("entailment", "contradiction"):
            groups[premise][label].append(hypothesis)
    return groups


def _pair_up(
    premise: str, entailments: list[str], contradictions: list[str], pairing: str, instruction: str | None
) -> list[Triplet]:
    if not entailments or not contradictions:
        return []
    if pairing == "per_premise":
        pairs = [(entailments[0], contradictions[0])]
    elif pairing == "per_entailment":
        pairs = [(e, contradictions[i % len(contradictions)]) for i, e in enumerate(entailments)]
    else:
        pairs = [(e, c) for e in entailments for c in contradictions]
    return [Triplet(premise, e, [c], instruction) for e, c in pairs]


# ----------------------------------------------------------------------------- MS MARCO (BEIR layout)


def msmarco_triplets(
    root: str | os.PathLike[str],
    *,
    split: str = "test",
    min_score: int = 2,
    negatives_per_triplet: int = 1,
    instruction: str | None = MSMARCO_INSTRUCTION,
    on_error: OnError = "skip",
) -> list[Triplet]:
    """(query, relevant passage, judged-less-relevant passages) from a BEIR-format folder.

    Reads ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``. Passages judged
    ``>= min_score`` are positives (one triplet each); judged passages below it are on-topic but
    not answering, so they are the hard negatives, assigned round-robin so each gets used.
    """
    root = _existing(root)
    problems = Problems(on_error)
    corpus = _beir_texts(root / "corpus.jsonl", problems)
    queries = _beir_texts(root / "queries.jsonl", problems)
    judged = _qrels(root / "qrels" / f"{split}.tsv", queries, corpus, problems)
    triplets = []
    for query_id, scored in judged.items():
        positives = [corpus[doc] for doc, score in scored if score >= min_score]
        negatives = [corpus[doc] for doc, score in scored if score < min_score]
        for index, positive in enumerate(positives):
            picked = _round_robin(negatives, index, negatives_per_triplet)
            triplets.append(Triplet(queries[query_id], positive, picked, instruction))
    problems.finish(str(root))
    return triplets


def _round_robin(items: list[str], index: int, count: int) -> list[str]:
    count = min(count, len(items))
    return [items[(index * count + offset) % len(items)] for offset in range(count)]


def _beir_texts(path: Path, problems: Problems) -> dict[str, str]:
    """``_id -> text`` of a BEIR corpus or queries file; a non-empty title is prepended."""
    texts = {}
    for where, record in iter_jsonl(_existing(path), problems):
        (key, bad_id), (text, bad_text) = string_field(record, "_id"), string_field(record, "text")
        if bad_id or bad_text:
            problems.report(where, bad_id or bad_text or "")
            continue
        title = record.get("title")
        texts[key] = f"{title.strip()} {text}" if isinstance(title, str) and title.strip() else text
    return texts


def _qrels(
    path: Path, queries: dict[str, str], corpus: dict[str, str], problems: Problems
) -> dict[str, list[tuple[str, int]]]:
    """query id -> [(corpus id, score)] in file order; an optional BEIR header line is skipped."""
    judged: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for lineno, line in iter_lines(_existing(path), problems):
        fields = line.split("\t")
        if not line.strip() or (lineno == 1 and fields[0] == "query-id"):
            continue
        reason = _qrel_problem(fields, queries, corpus)
        if reason:
            problems.report(f"{path}:{lineno}", reason)
        else:
            judged[fields[0]].append((fields[1], int(fields[2])))
    return judged


def _qrel_problem(fields: list[str], queries: dict[str, str], corpus: dict[str, str]) -> str | None:
    if len(fields) != 3:
        return f"expected 3 fields (query-id, corpus-id, score), got {len(fields)}"
    if not re.fullmatch(r"-?\d+", fields[2].strip()):
        return f"score {fields[2]!r} is not an integer"
    if fields[0] not in queries:
        return f"unknown query-id {fields[0]!r}"
    return f"unknown corpus-id {fields[1]!r}" if fields[1] not in corpus else None


# ----------------------------------------------------------------------------- WikiSplit


def wikisplit_triplets(
    path: str | os.PathLike[str],
    *,
    detokenize: bool = True,
    instruction: str | None = SIMILAR_INSTRUCTION,
    on_error: OnError = "skip",
) -> list[Triplet]:
    """(complex sentence, its split rewrite) positive pairs from WikiSplit TSV file(s).

    Each row is ``complex<TAB>first . <::::> second .``; the positive is the split sentences
    joined by a space, with no hard negative. WikiSplit text is tokenized (``Bob 's``, ``a , b``),
    so by default both sides get :func:`detokenize_ptb`. A directory means its ``*.tsv`` files.
    """
    root = _existing(path)
    files = sorted(root.glob("*.tsv")) if root.is_dir() else [root]
    problems = Problems(on_error)
    triplets = []
    for file in files:
        for where, row in iter_table(
            file, problems, "tsv", ["complex", "split"], header=["complex", "split"]
        ):
            if "<::::>" not in row["split"]:
                problems.report(where, "split column has no '<::::>' separator")
                continue
            positive = " ".join(part.strip() for part in row["split"].split("<::::>"))
            pair = [detokenize_ptb(t) if detokenize else t.strip() for t in (row["complex"], positive)]
            triplets.append(Triplet(pair[0], pair[1], [], instruction))
    problems.finish(str(path))
    return triplets


_DETOKENIZE_RULES: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"(?:``|'') (.*?) ''"), lambda m: f'"{m.group(1)}"'),  # paired double quotes
    (re.compile(r"``|''"), '"'),
    (re.compile(r" (?=(?:n't|'s|'re|'ve|'ll|'d|'m)\b)", re.IGNORECASE), ""),  # clitics: she 's -> she's
    (re.compile(r"(?<!\S)' ([^']*?) '(?!\S)"), lambda m: f"'{m.group(1)}'"),  # paired single quotes
    (re.compile(r" (?=[.,;:!?%)\]}])"), ""),
    (re.compile(r"(?<=[(\[{$£€]) "), ""),
    (re.compile(r"(?<=\w) (?=[-/] \w)|(?<=\w [-/]) (?=\w)"), ""),  # so - called -> so-called
]


def detokenize_ptb(text: str) -> str:
    """Undo Penn-Treebank-style tokenization well enough to mix WikiSplit with untokenized text.

    A light rule set (paired quotes, clitics, punctuation spacing, hyphens); ``--`` and a lone
    ``'`` are left alone because they are ambiguous.
    """
    text = text.strip()
    for pattern, replacement in _DETOKENIZE_RULES:
        text = pattern.sub(replacement, text)
    return text


# ----------------------------------------------------------------------------- dispatcher

PAIR_SOURCES: dict[str, Any] = {
    "snli": snli_triplets,
    "msmarco": msmarco_triplets,
    "wikisplit": wikisplit_triplets,
}


def load_pairs_source(spec: str | os.PathLike[str], *, on_error: OnError = "skip") -> list[Triplet]:
    """Triplets from ``snli:PATH``, ``msmarco:DIR``, ``wikisplit:PATH`` or a .jsonl/.csv/.tsv path."""
    text = os.fspath(spec)
    kind, _, rest = text.partition(":")
    if kind in PAIR_SOURCES and rest:
        return PAIR_SOURCES[kind](rest, on_error=on_error)
    if re.fullmatch(r"[a-z]{2,}", kind) and rest and not Path(text).exists():
        raise DataError(
            f"{text!r}: unknown source type {kind!r}; use one of {', '.join(PAIR_SOURCES)}: or a path"
        )
    return load_triplets(text, on_error=on_error)
