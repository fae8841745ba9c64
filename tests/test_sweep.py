"""bench/sweep.py's smoke configuration runs end to end on a tiny model in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import byte_tokenizer, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_smoke_profile_writes_table_curves_and_plot(tmp_path):
    model = tmp_path / "model"
    tiny_model("llama", causal_lm=True).save_pretrained(model)
    byte_tokenizer().save_pretrained(model)
    sentences = [f"sentence {i} about the {w} on the hill" for i, w in enumerate(["cat", "dog", "owl", "fox"] * 4)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences) + "\n")
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"sentence1": s, "sentence2": sentences[(i + 5) % 16], "score": i % 5}) + "\n"
                           for i, s in enumerate(sentences)))
    command = [sys.executable, str(ROOT / "bench" / "sweep.py"), "--profile", "smoke", "--model", str(model),
               "--corpus", str(corpus), "--dev", str(dev), "--work", str(tmp_path / "work"),
               "--results", str(tmp_path / "results"), "--doc-queries", "4", "--doc-distractors", "6",
               "--doc-max-length", "32"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    [report] = (tmp_path / "results").glob("sweep-smoke-*.json")
    variants = json.loads(report.read_text())["variants"]
    assert set(variants) == {"bi + MNTP + SimCSE", "causal + SimCSE", "bi + MNTP + SimCSE, unstacked"}
    unstacked = variants["bi + MNTP + SimCSE, unstacked"]["curve"]
    assert unstacked[:3] == variants["bi + MNTP + SimCSE"]["curve"][:3]  # one shared MNTP stage, trained once
    curve = variants["bi + MNTP + SimCSE"]["curve"]
    assert [p["stage"] for p in curve] == ["mntp"] * 3 + ["simcse"] * 3  # steps 0, 1, 2 of each stage
    assert all(b["minutes"] >= a["minutes"] for a, b in zip(curve, curve[1:]))  # one time axis across stages
    assert variants["causal + SimCSE"]["bidirectional"] is False
    assert (tmp_path / "results" / report.name.replace(".json", "-dev-curves.png")).stat().st_size > 1000
    assert "| causal + SimCSE |" in report.with_suffix(".md").read_text()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0 and json.loads(report.read_text())["variants"] == variants  # resumed, not retrained


def test_quality_rows_are_asked_for_by_whole_name_or_by_the_start_of_one():
    sys.path.insert(0, str(ROOT / "bench"))
    import quality

    names = list(quality.TRAINED_ROWS.values())
    picked = lambda asked: [n for n in names if quality.row_matches(n, asked, names)]  # noqa: E731
    assert picked("bi + MNTP") == ["bi + MNTP"]  # a whole name: not every row that starts with it
    assert picked("bi + MNTP + supervised (SNLI)") == ["bi + MNTP + supervised (SNLI)"]
    assert picked("bi + MNTP + supervised (SNLI, trained") == [quality.TRAINED_ROWS["supervised_plain"]]
    assert picked("bi + SimCSE") == [quality.TRAINED_ROWS["bi_simcse"], quality.TRAINED_ROWS["annealed_simcse"]]


def test_quality_carries_only_untrained_rows_from_an_earlier_result_of_the_same_profile(tmp_path):
    import argparse

    import pytest

    sys.path.insert(0, str(ROOT / "bench"))
    import quality

    row = {t: 40.0 for t in quality.STS} | {t + quality.NO_INSTRUCTION: 50.0 for t in quality.STS}
    earlier = tmp_path / "quality-cpu-2026-12-02.json"
    earlier.write_text(json.dumps({"profile": "cpu", "scores": {
        "bidirectional, no training": row, "causal + mean (uni)": row, quality.TRAINED_ROWS["simcse"]: row}}))
    args = argparse.Namespace(carry=earlier, profile="cpu", sts_only=True)
    carried = quality.carried_rows(args, {"causal + mean (uni)": {"STS avg": 1.0}})
    assert list(carried) == ["bidirectional, no training"]  # evaluated rows and trained rows are never carried
    assert carried["bidirectional, no training"]["STS avg"] == 40.0
    assert carried["bidirectional, no training"]["carried_from"] == earlier.name
    with pytest.raises(SystemExit, match="profile"):
        quality.carried_rows(argparse.Namespace(carry=earlier, profile="gpu", sts_only=True), {})
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SystemExit, match="not a readable quality result"):
        quality.carried_rows(argparse.Namespace(carry=broken, profile="cpu", sts_only=True), {})


def test_quality_encoders_are_key_equals_folder_with_a_known_key():
    import argparse

    import pytest

    sys.path.insert(0, str(ROOT / "bench"))
    import quality

    given = quality.given_encoders(argparse.Namespace(encoders=["simcse=runs/a=b", "mntp=/m"]))
    assert given == {"simcse": "runs/a=b", "mntp": "/m"}  # split at the first "=" only
    assert quality.given_encoders(argparse.Namespace(encoders=None)) == {}
    for bad in ("simcse", "simcse=", "bogus=/x"):
        with pytest.raises(SystemExit, match="expected KEY=DIR"):
            quality.given_encoders(argparse.Namespace(encoders=[bad]))


def test_document_dev_puts_the_query_instruction_on_the_claims_only(monkeypatch):
    """bench/doc_dev.py scores instruction-trained encoders as they are meant to be queried: the
    instruction on the SciFact claims, never on the abstracts (as LLM2Vec's retrieval evaluation)."""
    import argparse

    import numpy as np
    import pytest
    from conftest import SHARED_DATA

    import lm2vec

    if not (SHARED_DATA / "retrieval/SciFact/claims_train.csv").is_file():
        pytest.skip(f"SciFact not found under {SHARED_DATA}")
    sys.path.insert(0, str(ROOT / "bench"))
    import sweep

    calls = []

    class Recording:
        def encode(self, texts, instruction=None, normalize=False):
            calls.append((len(texts), instruction))
            return np.random.default_rng(len(calls)).normal(size=(len(texts), 8))

    monkeypatch.setattr(lm2vec.Encoder, "from_pretrained", lambda *a, **k: Recording())
    args = argparse.Namespace(data_dir=SHARED_DATA, doc_queries=4, doc_distractors=6, doc_max_length=32)
    score = sweep.document_dev("any", args, query_instruction="Given a claim:")
    assert calls[0] == (4, "Given a claim:") and calls[1][1] is None and calls[1][0] >= 6 + 4
    assert 0.0 <= score <= 100.0
    sweep.document_dev("any", args)
    assert calls[2] == (4, None)
