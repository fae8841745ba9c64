"""Loaders for the benchmark files as their authors released them (see shared/data/README.md).

Each loader rebuilds the test set that MTEB's hub copy holds, from the original files, so that mteb's own
task classes can score it offline. Loaders return plain columns, never mteb or `datasets` objects
(eval/mteb.py converts them): {hf_subset: {split: {column: list}}}. Retrieval splits hold
{"corpus": columns, "queries": columns, "qrels": {query_id: {doc_id: relevance}}}.

Parsing rules come from the README: split lines on "\\n" only (some texts hold other Unicode line
breaks), tolerate CRLF, never let a CSV reader guess at quotes in TSV files unless they are real CSV.

Checked against the descriptive statistics mteb 2.26 ships for its hub copies: counts match everywhere
and texts match character for character for STSBenchmark, SICK-R, Banking77, AmazonCounterfactual (en)
and SciFact. Known differences: STS12-16 gold scores match but MTEB's texts are ~1 character per
sentence longer (apparently re-tokenized upstream); BIOSSES and Emotion texts differ by <0.6%, and one
BIOSSES gold mean by 0.2; MTEB's TwitterSemEval2015 holds 16,777 pairs, not the official 838-pair
SemEval-2015 test set built here. Scores on those tasks are close to, not identical with, hub-based MTEB.
"""

from __future__ import annotations

import ast
import csv
import difflib
import json
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from pathlib import Path

Columns = dict[str, list]
Subsets = dict[str, dict[str, Columns]]


def _lines(path: Path) -> list[str]:
    """Lines split on '\\n' only, CR stripped, a final empty line dropped."""
    lines = [line.removesuffix("\r") for line in path.read_text(encoding="utf-8").split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines


def _tsv(path: Path, quoting: int = csv.QUOTE_NONE) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=quoting))


def _pairs(s1: list[str], s2: list[str], score: list[float]) -> Subsets:
    return {"default": {"test": {"sentence1": s1, "sentence2": s2, "score": score}}}


# ---- STS ---------------------------------------------------------------------------------------
def load_stsbenchmark(root: Path) -> Subsets:
    """sts-test.csv: fields 4-6 are score, sentence1, sentence2; some lines carry 2 extra fields."""
    rows = _tsv(root / "sts/STSBenchmark/sts-test.csv")
    return _pairs([r[5] for r in rows], [r[6] for r in rows], [float(r[4]) for r in rows])


def load_sickr(root: Path) -> Subsets:
    """MTEB's SICK-R test is all 9,927 pairs: train + trial + test_annotated, relatedness 1-5."""
    s1, s2, score = [], [], []
    for name in ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"):
        for r in _tsv(root / "sts/SICK-R" / name)[1:]:  # header: pair_ID sentence_A sentence_B score ...
            s1.append(r[1])
            s2.append(r[2])
            score.append(float(r[3]))
    return _pairs(s1, s2, score)


def load_sts_year(root: Path, year: int) -> Subsets:
    """STS12-16 (`year` 12..16): all subsets of the year pooled into one test set, as MTEB does;
    unscored pairs (blank gold line) skipped."""
    folder = root / f"sts/STS{year}"
    prefix = "STS.2016." if year == 16 else "STS."
    s1, s2, score = [], [], []
    for gold_path in sorted(folder.glob(f"{prefix}gs.*.txt")):
        inputs = _lines(folder / gold_path.name.replace(".gs.", ".input."))
        gold = _lines(gold_path)
        if len(inputs) != len(gold):
            raise ValueError(f"{gold_path}: {len(gold)} gold lines for {len(inputs)} input lines")
        for line, g in zip(inputs, gold, strict=True):
            if g.strip():
                fields = line.split("\t")
                s1.append(fields[0])
                s2.append(fields[1])
                score.append(float(g))
    return _pairs(s1, s2, score)


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def _docx_table(path: Path) -> list[list[str]]:
    """Rows of the first table in a .docx, each cell's non-empty paragraphs joined by a space."""
    root = ET.fromstring(zipfile.ZipFile(path).read("word/document.xml"))
    table = next(root.iter(f"{_W}tbl"))
    rows = []
    for tr in table.iter(f"{_W}tr"):
        cells = []
        for tc in tr.findall(f"{_W}tc"):
            paras = ["".join(t.text or "" for t in p.iter(f"{_W}t")) for p in tc.iter(f"{_W}p")]
            cells.append(" ".join(p.strip() for p in paras if p.strip()))
        rows.append(cells)
    return rows


def load_biosses(root: Path) -> Subsets:
    """BIOSSES: sentence pairs and five annotators' 0-4 scores in two .docx tables; gold = their mean."""
    pairs = {int(r[0]): (r[1], r[2]) for r in _docx_table(root / "sts/BIOSSES/Annotation-Pairs.docx")[1:]}
    scores = {
        int(r[0]): [float(x) for x in r[1:6]]
        for r in _docx_table(root / "sts/BIOSSES/Annotator-Scores.docx")[1:]
    }
    ids = sorted(pairs)
    if ids != sorted(scores):
        raise ValueError("BIOSSES: pair ids and score ids differ")
    return _pairs([pairs[i][0] for i in ids], [pairs[i][1] for i in ids], [sum(scores[i]) / 5 for i in ids])


# ---- pair classification -------------------------------------------------------------------------
def load_twitter_semeval2015(root: Path) -> Subsets:
    """SemEval-2015 PIT test: sentences from test.data, binary gold from test.label.

    '----' marks a debatable pair, which the official evaluation (and the README's 838) leaves out."""
    folder = root / "pairs/TwitterSemEval2015"
    rows = _tsv(folder / "test.data")
    labels = [line.split("\t")[0] for line in _lines(folder / "test.label")]
    if len(rows) != len(labels):
        raise ValueError(f"TwitterSemEval2015: {len(rows)} pairs but {len(labels)} labels")
    kept = [(r, lab) for r, lab in zip(rows, labels, strict=True) if lab in ("true", "false")]
    columns = {
        "sentence1": [r[2] for r, _ in kept],
        "sentence2": [r[3] for r, _ in kept],
        "labels": [int(lab == "true") for _, lab in kept],
    }
    return {"default": {"test": columns}}


# ---- classification ------------------------------------------------------------------------------
def load_banking77(root: Path) -> Subsets:
    """Real CSV (quoted texts) with header text,category; label ids follow categories.json order."""
    folder = root / "classification/Banking77"
    names = json.loads((folder / "categories.json").read_text(encoding="utf-8"))
    index = {name: i for i, name in enumerate(names)}
    splits = {}
    for split in ("train", "test"):
        with (folder / f"{split}.csv").open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        splits[split] = {"text": [r["text"] for r in rows], "label": [index[r["category"]] for r in rows]}
    return {"default": splits}


EMOTION_LABELS = ("sadness", "joy", "love", "anger", "fear", "surprise")  # dair-ai/emotion ids 0-5


def load_emotion(root: Path) -> Subsets:
    """`text;label` per line (the label never contains ';'); validation comes from val.txt."""
    index = {name: i for i, name in enumerate(EMOTION_LABELS)}
    splits = {}
    for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        rows = [line.rsplit(";", 1) for line in _lines(root / f"classification/Emotion/{name}.txt")]
        splits[split] = {"text": [t for t, _ in rows], "label": [index[lab] for _, lab in rows]}
    return {"default": splits}


def load_amazon_counterfactual(root: Path, subset: str = "en") -> Subsets:
    """EN_*.tsv (subset en) or EN-ext_*.tsv (en-ext): sentence<TAB>is_counterfactual.

    Texts that contain quotes were written by a CSV writer (quoted, quotes doubled), so the standard
    CSV quoting rules are the right inverse here, unlike for STSBenchmark.
    """
    prefix = {"en": "EN", "en-ext": "EN-ext"}[subset]
    splits = {}
    for split, name in (("train", "train"), ("validation", "valid"), ("test", "test")):
        rows = _tsv(root / f"classification/AmazonCounterfactual/{prefix}_{name}.tsv", csv.QUOTE_MINIMAL)[1:]
        splits[split] = {"text": [r[0] for r in rows], "label": [int(r[1]) for r in rows]}
    return {subset: splits}


# ---- retrieval -----------------------------------------------------------------------------------
_PY_STRING = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""", re.DOTALL)


def _sentences(abstract: str) -> list[str]:
    """The abstract column is a numpy-style repr of a string array: quoted literals, no commas."""
    return [ast.literal_eval(s) for s in _PY_STRING.findall(abstract)]


def load_scifact(root: Path, claims: str = "validation") -> Subsets:
    """BEIR's SciFact test set rebuilt from the AllenAI CSV export (README, section D).

    Corpus: all 5,183 docs, title kept apart (mteb joins title and text), text = the abstract sentences,
    each stripped, joined by spaces (this reproduces BEIR's text exactly). Queries: the 300 validation
    claims (`claims="train"`: the 809 train claims, which no benchmark scores: a dev set). Qrels: the
    (claim, cited_doc_id) pairs, relevance 1.
    """
    folder = root / "retrieval/SciFact"
    with (folder / "corpus_train.csv").open(encoding="utf-8", newline="") as f:
        docs = list(csv.DictReader(f))
    corpus = {
        "id": [d["doc_id"] for d in docs],
        "title": [d["title"] for d in docs],
        "text": [" ".join(s.strip() for s in _sentences(d["abstract"])) for d in docs],
    }
    with (folder / f"claims_{claims}.csv").open(encoding="utf-8", newline="") as f:
        claims = list(csv.DictReader(f))
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for c in claims:
        queries.setdefault(c["id"], c["claim"])
        for doc_id in c["cited_doc_ids"].strip("[]").split():
            qrels.setdefault(c["id"], {})[doc_id] = 1
    split = {
        "corpus": corpus,
        "queries": {"id": list(queries), "text": list(queries.values())},
        "qrels": qrels,
    }
    return {"default": {"test": split}}


# mteb task name -> loader(data_dir). The names are mteb's, so results line up with the leaderboard's.
LOADERS: dict[str, Callable[[Path], Subsets]] = {
    "STSBenchmark": load_stsbenchmark,
    "SICK-R": load_sickr,
    **{f"STS{y}": (lambda root, y=y: load_sts_year(root, y)) for y in (12, 13, 14, 15, 16)},
    "BIOSSES": load_biosses,
    "TwitterSemEval2015": load_twitter_semeval2015,
    "Banking77Classification": load_banking77,
    "EmotionClassification": load_emotion,
    "AmazonCounterfactualClassification": load_amazon_counterfactual,
    "SciFact": load_scifact,
}


class UnknownTaskError(KeyError, ValueError):
    """A task name with no local data (a KeyError for old callers, a ValueError for the CLI)."""

    def __str__(self) -> str:
        return str(self.args[0])


def check_local_task(task_name: str) -> None:
    if task_name not in LOADERS:
        close = difflib.get_close_matches(task_name, LOADERS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownTaskError(f"no local data for task {task_name!r}; {hint}offline tasks: {', '.join(LOADERS)}")


def load_local(task_name: str, data_dir: str | Path) -> Subsets:
    """Columns of one task from the local data pack; an unknown name gets the tasks that exist offline."""
    check_local_task(task_name)
    return LOADERS[task_name](Path(data_dir))
