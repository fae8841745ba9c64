"""Word-level probes: CoNLL reading, word -> sub-token mapping, gathering, span F1, and the probe end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, byte_tokenizer, tiny_encoder

from lm2vec.data.errors import DataError, DataWarning
from lm2vec.eval import probes
from lm2vec.eval.conll import iob_spans, load_split, read_conll, span_scores
from lm2vec.eval.probes import ProbeSettings, gather_words, probe, probe_tasks, word_features, word_spans

COLUMNS_2003 = ("pos", "chunk", "ner")


@pytest.fixture(scope="module")
def word_data() -> Path:
    if not (SHARED_DATA / "word" / "CoNLL-2003" / "train.txt").exists():
        pytest.skip(f"CoNLL data not found under {SHARED_DATA}/word (set LM2VEC_SHARED_DATA)")
    return SHARED_DATA


def _head(path: Path, lines: int, target: Path) -> Path:
    """A fixture made from the first lines of a real file (read at test time, never committed)."""
    with path.open(encoding="utf-8") as f:
        target.write_text("".join(next(f) for _ in range(lines)), encoding="utf-8")
    return target


# ---- reader -----------------------------------------------------------------------------------------
def test_reader_on_first_rows_of_real_files(word_data, tmp_path):
    head = _head(word_data / "word/CoNLL-2003/train.txt", 16, tmp_path / "c03.txt")
    first, second = read_conll(head, COLUMNS_2003)[:2]
    assert first.words == ("EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", ".")
    assert first.tags["pos"][:3] == ("NNP", "VBZ", "JJ")
    assert first.tags["chunk"][:4] == ("B-NP", "B-VP", "B-NP", "I-NP")
    assert first.tags["ner"] == ("B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O")
    assert second.words == ("Peter", "Blackburn") and second.tags["ner"] == ("B-PER", "I-PER")
    head = _head(word_data / "word/CoNLL-2000/train.txt", 12, tmp_path / "c00.txt")
    (only,) = read_conll(head, ("pos", "chunk"))  # no blank line at the end: the sentence still counts
    assert only.words[:4] == ("Confidence", "in", "the", "pound") and only.tags["chunk"][:2] == (
        "B-NP",
        "B-PP",
    )


def test_reader_counts_match_the_official_ones(word_data):
    counts = {
        (d, s): len(load_split(word_data, d, s))
        for d, s in [
            ("conll2003", "train"),
            ("conll2003", "test"),
            ("conll2000", "train"),
            ("conll2000", "test"),
        ]
    }
    assert counts == {
        ("conll2003", "train"): 14041,
        ("conll2003", "test"): 3453,
        ("conll2000", "train"): 8936,
        ("conll2000", "test"): 2012,
    }


@pytest.mark.parametrize(
    ("line", "reason"),
    [("lamb NN I-NP", "expected 4 fields"), ("lamb NN I-NP X-PER", "not IOB2"), ("lamb NN NP O", "not IOB2")],
)
def test_reader_reports_file_and_line(tmp_path, line, reason):
    path = tmp_path / "bad.txt"
    path.write_text(f"-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\n{line}\n\n")
    with pytest.raises(DataError, match=rf"bad\.txt:4: .*{reason}"):
        read_conll(path, COLUMNS_2003)
    with pytest.warns(DataWarning, match="skipped 1 malformed"):
        (sentence,) = read_conll(path, COLUMNS_2003, on_error="skip")
    assert sentence.words == ("EU",)


# ---- span F1 ------------------------------------------------------------------------------------------
def test_iob_spans_conlleval_style():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-ORG"]
    assert iob_spans(tags) == {("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 5, 7)}
    assert iob_spans(["O", "O"]) == set()


def test_span_scores_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG"]]  # 3 gold spans
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG", "O"]]  # 3 predicted, only PER matches
    scores = span_scores(gold, pred)
    assert scores == pytest.approx({"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3})
    pred = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "O", "O"]]  # 2 predicted, both right
    assert span_scores(gold, pred) == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8})
    assert span_scores([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


# ---- words -> sub-tokens -> vectors -------------------------------------------------------------------
def test_word_spans_on_byte_tokenizer():
    # <s> E U Ġ r e j e c t s Ġ M Ã ¼ l l e r   ("ü" is two bytes; spaces are tokens of their own)
    spans = word_spans(byte_tokenizer(), ["EU", "rejects", "Müller"], max_length=512)
    assert spans.first.tolist() == [1, 4, 12] and spans.last.tolist() == [2, 10, 18]
    assert len(spans.tokens.ids) == 19 and not spans.tokens.truncated
    cut = word_spans(byte_tokenizer(), ["EU", "rejects", "Müller"], max_length=6)
    assert cut.first.tolist() == [1, 4, -1] and cut.last.tolist() == [2, 5, -1] and cut.tokens.truncated
    no_bos = word_spans(byte_tokenizer(add_bos=False), ["a", "bc"], max_length=512)
    assert no_bos.first.tolist() == [0, 2] and no_bos.last.tolist() == [0, 3]


def test_gather_first_mean_and_shift_hand_checked():
    hidden = torch.arange(12, dtype=torch.float32).reshape(1, 6, 2)  # state at t = [2t, 2t+1]
    rows, first, last = torch.tensor([0, 0, 0]), torch.tensor([0, 1, 4]), torch.tensor([0, 3, 5])
    expected = {
        ("first", False): [[0, 1], [2, 3], [8, 9]],
        ("mean", False): [[0, 1], [4, 5], [9, 10]],  # t=1..3 -> mean t=2; t=4..5 -> 4.5
        ("first", True): [[0, 1], [0, 1], [6, 7]],  # t-1, clamped at the first token
        ("mean", True): [[0, 1], [2, 3], [7, 8]],  # t=0..2 -> 1; t=3..4 -> 3.5
    }
    for (pooling, shift), want in expected.items():
        got = gather_words(hidden, rows, first, last, pooling, shift)
        assert torch.equal(got, torch.tensor(want, dtype=torch.float32)), (pooling, shift)


def _sentence(words, tags):
    from lm2vec.eval.conll import Sentence

    return Sentence(tuple(words), {"pos": tuple(tags)})


def test_word_features_batched_equal_alone_and_match_hidden_states():
    encoder = tiny_encoder()
    sentences = [
        _sentence(w.split(), ["X"] * len(w.split()))
        for w in ["a cat sat on the mat", "hi", "several longer words appear in this sentence here"]
    ]
    for pooling in ("first", "mean"):
        batched = word_features(encoder, sentences, pooling, shift=True, batch_size=3)
        alone = np.concatenate([word_features(encoder, [s], pooling, shift=True) for s in sentences])
        assert batched.shape == (15, 64) and np.abs(batched - alone).max() < 1e-4
    spans = word_spans(encoder.tokenizer, sentences[0].words, 512)
    with torch.inference_mode():
        hidden = encoder.hidden_states(encoder.collate([spans.tokens]))[0]
    first = word_features(encoder, sentences[:1], "first")
    assert np.abs(first - hidden[torch.from_numpy(spans.first)].numpy()).max() < 1e-5


def test_classifier_solves_sklearns_logistic_regression_objective():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 6)).astype(np.float32) * [1, 5, 0.2, 1, 1, 30]  # uneven scales
    labels = np.array(["A", "B", "C"])[(features[:, :3] / [1, 5, 0.2] + rng.normal(size=(300, 3))).argmax(1)]
    ours = probes.fit_classifier(features, list(labels), c=0.1, max_iter=1000)
    standard = (features - ours.mean) / ours.scale
    reference = sklearn.LogisticRegression(C=0.1, tol=1e-8, max_iter=1000).fit(standard, labels)
    assert ours.converged and list(ours.classes) == list(reference.classes_)
    assert np.abs(ours.weight.numpy().T - reference.coef_).max() < 1e-3
    assert (ours.predict(features) == reference.predict(standard)).all()


# ---- the probe end to end -----------------------------------------------------------------------------
LEXICON = {
    "NN": ["apple", "bread", "chair"],
    "VB": ["dance", "eat", "fly"],
    "JJ": ["green", "happy"],
    "DT": ["the"],
}


def _write_corpus(root: Path, split: str, sentences: int, seed: int) -> None:
    """A CoNLL-2003-shaped corpus whose POS tag is a function of the word's first letter, with the
    majority class at 40%: a probe that reads token identity at all must beat the majority baseline."""
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(sentences):
        for _ in range(rng.randint(3, 7)):
            tag = rng.choices(list(LEXICON), weights=[4, 3, 2, 1])[0]
            ner = "B-PER" if tag == "NN" and rng.random() < 0.3 else "O"
            lines.append(f"{rng.choice(LEXICON[tag])} {tag} B-NP {ner}")
        lines.append("")
    (root / "word" / "CoNLL-2003").mkdir(parents=True, exist_ok=True)
    (root / "word" / "CoNLL-2003" / f"{split}.txt").write_text("\n".join(lines))


@pytest.fixture
def synthetic(tmp_path) -> Path:
    _write_corpus(tmp_path, "train", 60, seed=0)
    _write_corpus(tmp_path, "test", 20, seed=1)
    return tmp_path


def test_probe_beats_majority_when_features_are_informative(synthetic, tmp_path):
    encoder = tiny_encoder()
    result = probe(encoder, "conll2003-pos", synthetic, output_dir=tmp_path / "out")
    assert result["majority_baseline"]["accuracy"] < 0.5
    assert result["main_score"] > 0.9 > result["majority_baseline"]["accuracy"] + 0.3
    assert result["settings"]["shift"] is False and result["words"]["test_cut_off"] == 0
    report = json.loads((tmp_path / "out" / "probe_results.json").read_text())
    assert report["fingerprint"] == encoder.fingerprint() and "conll2003-pos" in report["tasks"]


def test_probe_reads_unshifted_by_default_shifts_when_asked_and_caches(synthetic, tmp_path, monkeypatch):
    encoder = tiny_encoder(training={"mntp": {"max_steps": 1}})  # MNTP-trained: still unshifted by default
    plain = probe_tasks(encoder, ["conll2003-pos"], synthetic)
    assert plain["conll2003-pos"]["settings"]["shift"] is False
    first = probe_tasks(encoder, ["conll2003-pos", "conll2003-ner"], synthetic, ProbeSettings(shift=True),
                        cache_dir=tmp_path / "cache")
    assert all(r["settings"]["shift"] is True for r in first.values())
    assert (
        0.0 <= first["conll2003-ner"]["main_score"] <= 1.0 and first["conll2003-ner"]["main_metric"] == "f1"
    )

    def no_encoding(*args, **kwargs):
        raise AssertionError("cached features were re-encoded")

    monkeypatch.setattr(probes, "word_features", no_encoding)
    again = probe(encoder, "conll2003-pos", synthetic, shift=True, cache_dir=tmp_path / "cache")
    assert again["main_score"] == first["conll2003-pos"]["main_score"]


def test_probe_on_a_real_slice(word_data):
    encoder = tiny_encoder(max_length=24)  # short enough that some test words are cut off
    settings = ProbeSettings(train_limit=20, test_limit=10, max_iter=200)
    results = probe_tasks(encoder, list(probes.TASKS), word_data, settings)
    for name, r in results.items():
        assert all(0.0 <= v <= 1.0 for v in r["scores"].values()), name
        assert r["sentences"] == {"train": 20, "test": 10} and r["settings"]["max_iter"] == 200
    assert any(r["words"]["test_cut_off"] > 0 for r in results.values())


def test_unknown_task_pooling_and_missing_data_are_rejected(synthetic):
    with pytest.raises(ValueError, match="unknown probe task"):
        probe(tiny_encoder(), "conll2003-srl", synthetic)
    with pytest.raises(ValueError, match="pooling"):
        probe(tiny_encoder(), "conll2003-pos", synthetic, pooling="last")
    with pytest.raises(FileNotFoundError, match="CoNLL-2000"):
        probe(tiny_encoder(), "conll2000-chunk", synthetic)  # the synthetic pack has CoNLL-2003 only


def test_probe_command_prints_table_and_writes_json(synthetic, tmp_path):
    from typer.testing import CliRunner

    from lm2vec.cli import app

    model_dir = tiny_encoder().save_pretrained(tmp_path / "tiny")
    out = tmp_path / "results"
    args = [
        "probe",
        str(model_dir),
        "--task",
        "conll2003-pos,conll2003-ner",
        "--data-dir",
        str(synthetic),
        "--train-limit",
        "40",
        "-o",
        str(out),
    ]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert "conll2003-pos" in run.output and "majority" in run.output
    report = json.loads((out / "probe_results.json").read_text())
    assert report["tasks"]["conll2003-pos"]["settings"]["train_limit"] == 40
    assert set(report["tasks"]) == {"conll2003-pos", "conll2003-ner"}
