"""bench/peers.py's smoke profile trains every peer method on a tiny model and scores it end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, byte_tokenizer, tiny_bert, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_peers_smoke_profile_writes_the_table(tmp_path):
    pytest.importorskip("mteb")
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"benchmark data pack not found at {SHARED_DATA} (set LM2VEC_SHARED_DATA)")
    model = tmp_path / "model"
    tiny_model("llama", causal_lm=True).save_pretrained(model)
    byte_tokenizer().save_pretrained(model)
    sentences = [f"sentence {i} about the {w} on the hill" for i, w in enumerate(["cat", "dog", "owl", "fox"] * 4)]
    (tmp_path / "corpus.txt").write_text("\n".join(sentences) + "\n")
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps({"sentence1": s, "sentence2": sentences[(i + 5) % 16],
                                                             "score": i % 5}) + "\n" for i, s in enumerate(sentences)))
    (tmp_path / "triplets.jsonl").write_text("".join(json.dumps({"query": s, "positive": s.replace("hill", "mound"),
                                                                 "negatives": [sentences[(i + 3) % 16]]}) + "\n"
                                                     for i, s in enumerate(sentences)))
    command = [sys.executable, str(ROOT / "bench" / "peers.py"), "--profile", "smoke", "--model", str(model),
               "--contextual-encoder", str(tiny_bert(tmp_path / "bert")), "--corpus", str(tmp_path / "corpus.txt"),
               "--triplets", str(tmp_path / "triplets.jsonl"), "--dev", str(tmp_path / "dev.jsonl"),
               "--dev-limit", "20", "--data-dir", str(SHARED_DATA), "--work", str(tmp_path / "work"),
               "--results", str(tmp_path / "results"), "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    [report] = (tmp_path / "results").glob("peers-smoke-*.json")
    payload = json.loads(report.read_text())
    scores = payload["scores"]
    assert set(payload["train_minutes"]) == {"llm2vec_unsup", "annealed_unsup", "llm2vec_sup", "causal_sup",
                                             "echo_sup", "contextual_sup", "latent_sup", "matryoshka_sup"}
    assert [f"Matryoshka supervised @{d}" in scores for d in (64, 32, 16)] == [True] * 3
    assert all(r[t] is not None for r in scores.values() for t in ("STSBenchmark", "Banking77Classification"))
    plain, echo = scores["plain mean pooling: bi, untrained (speed reference)"], scores["Echo: causal + mean, untrained"]
    assert echo["llm_tokens_per_text"] > 2 * plain["llm_tokens_per_text"]  # Echo doubles the sequence
    contextual = scores["contextual token + supervised (causal, last token, concat)"]
    assert contextual["llm_tokens_per_text"] == plain["llm_tokens_per_text"] + 1 and contextual["added_params"] > 0
    assert scores["latent-attention pooling + supervised (bi + MNTP)"]["added_trainable_params"] > 0
    table = report.with_suffix(".md").read_text()
    assert "| Echo + supervised (causal) |" in table and "x plain mean" in table
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    rescored = json.loads(report.read_text())["scores"]  # scores resumed, not recomputed; speed measured again
    columns = ("STS avg", "STSBenchmark", "TwitterSemEval2015")
    assert [[r[c] for c in columns] for r in rescored.values()] == [[r[c] for c in columns] for r in scores.values()]
    assert all(r["text_tokens_per_s"] > 0 for r in rescored.values())


def test_peers_reads_vectors_a_quality_run_already_cached(tmp_path):
    """A row whose encoder bench/quality.py scored is read from quality's embedding cache, not re-encoded."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "bench"))
    import peers

    from lm2vec.eval.cache import EmbeddingCache

    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    EmbeddingCache(tmp_path / "eval" / "some_row" / "embedding_cache", "fp1").put("STS12", ["a", "b"], "x:", vectors)
    assert peers.reuse_quality_vectors(tmp_path) == 1
    assert peers.reuse_quality_vectors(tmp_path) == 0  # linked once
    ours = EmbeddingCache(tmp_path / "peers-embeddings", "fp1")
    assert np.array_equal(ours.get("STS12", ["a", "b"], "x:"), vectors)
    assert EmbeddingCache(tmp_path / "peers-embeddings", "fp2").get("STS12", ["a", "b"], "x:") is None
