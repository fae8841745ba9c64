"""Sharded, resumable `lm2vec encode`: same vectors as one plain pass, in one process or under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_encoder

from lm2vec.core.sharded import encode_sharded, shard_dir

TEXTS = [f"text number {i} " + "word " * (i * 7 % 13) for i in range(23)]


def test_shards_merge_in_input_order_and_match_plain_encode(tmp_path):
    encoder = tiny_encoder()
    out = tmp_path / "vectors.npy"
    merged = encode_sharded(encoder, TEXTS, out, shard_size=5, batch_size=4)
    reference = encoder.encode(TEXTS, batch_size=4)
    assert np.load(out).shape == (23, 64)
    assert np.abs(np.load(out) - reference).max() < 1e-5 and np.array_equal(merged, np.load(out))
    assert not shard_dir(out).exists(), "shards are removed once merged"


def test_a_single_shard_job_writes_the_output_directly(tmp_path):
    encoder = tiny_encoder()
    out = tmp_path / "vectors.npy"
    encode_sharded(encoder, TEXTS, out, shard_size=100)
    assert not shard_dir(out).exists()
    assert np.abs(np.load(out) - encoder.encode(TEXTS)).max() < 1e-5


def test_interrupted_run_resumes_without_recomputing_finished_shards(tmp_path, monkeypatch):
    encoder = tiny_encoder()
    out, plain_encode, calls = tmp_path / "vectors.npy", encoder.encode, []

    def crash_on_third_shard(texts, **options):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return plain_encode(texts, **options)

    monkeypatch.setattr(encoder, "encode", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        encode_sharded(encoder, TEXTS, out, shard_size=5)
    assert not out.exists() and len(list(shard_dir(out).glob("shard-*.npy"))) == 2
    calls.clear()
    monkeypatch.setattr(encoder, "encode", lambda texts, **o: calls.append(len(texts)) or plain_encode(texts, **o))
    encode_sharded(encoder, TEXTS, out, shard_size=5)
    assert calls == [5, 5, 3], "only the three unfinished shards are encoded again"
    assert np.abs(np.load(out) - plain_encode(TEXTS)).max() < 1e-5


def test_shards_of_another_input_are_never_reused(tmp_path):
    encoder = tiny_encoder()
    out = tmp_path / "vectors.npy"
    encode_sharded(encoder, TEXTS, out, shard_size=5, keep_shards=True)
    other = [t.upper() for t in TEXTS]
    encode_sharded(encoder, other, out, shard_size=5)
    assert np.abs(np.load(out) - encoder.encode(other)).max() < 1e-5


def test_a_truncated_shard_file_is_recomputed(tmp_path):
    encoder = tiny_encoder()
    out = tmp_path / "vectors.npy"
    encode_sharded(encoder, TEXTS, out, shard_size=5, keep_shards=True)
    (shard_dir(out) / "shard-000001.npy").write_bytes(b"\x93NUMPY broken")
    encode_sharded(encoder, TEXTS, out, shard_size=5)
    assert np.abs(np.load(out) - encoder.encode(TEXTS)).max() < 1e-5


def _cli_encode(model_dir, texts_file, out, processes):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = launcher + ["-m", "lm2vec.cli", "encode", "-m", str(model_dir), "-i", str(texts_file), "-o", str(out),
                          "--shard-size", "4", "--batch-size", "3", "--device", "cpu"]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


def test_two_torchrun_processes_give_exactly_the_single_process_output(tmp_path):
    tiny_encoder().save_pretrained(tmp_path / "model")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    two = _cli_encode(tmp_path / "model", tmp_path / "texts.txt", tmp_path / "two.npy", processes=2)
    one = _cli_encode(tmp_path / "model", tmp_path / "texts.txt", tmp_path / "one.npy", processes=1)
    assert two.shape == (23, 64)
    np.testing.assert_array_equal(two, one)


def test_by_default_an_interruption_loses_at_most_one_batch(tmp_path, monkeypatch, capsys):
    encoder = tiny_encoder()
    out, plain_encode, calls = tmp_path / "vectors.npy", encoder.encode, []

    def crash_on_fourth_batch(texts, **options):
        calls.append(len(texts))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return plain_encode(texts, **options)

    monkeypatch.setattr(encoder, "encode", crash_on_fourth_batch)
    with pytest.raises(KeyboardInterrupt):
        encode_sharded(encoder, TEXTS, out, batch_size=4)
    assert calls == [4, 4, 4, 4] and len(list(shard_dir(out).glob("shard-*.npy"))) == 3, "3 whole batches kept"
    monkeypatch.setattr(encoder, "encode", plain_encode)
    capsys.readouterr()
    merged = encode_sharded(encoder, TEXTS, out, batch_size=4, show_progress=True)
    assert "23/23" in capsys.readouterr().err, "one progress bar, counted in texts across shards"
    assert np.abs(merged - plain_encode(TEXTS, batch_size=4)).max() < 1e-5


def test_shards_hold_texts_of_similar_length_and_truncation_is_reported_once(tmp_path):
    encoder = tiny_encoder(max_length=8)
    texts = [("word " * (i % 5 * 4)) + f"t{i}" for i in range(20)]
    with pytest.warns(UserWarning) as caught:
        merged = encode_sharded(encoder, texts, tmp_path / "v.npy", batch_size=4)
    messages = [str(w.message) for w in caught if "truncated" in str(w.message)]
    cut = sum(t.truncated for t in encoder.tokenize([(None, t) for t in texts]))
    assert 0 < cut < 20 and messages == [f"{cut} of 20 texts were longer than max_length=8 tokens and were truncated"]
    with pytest.warns(UserWarning):
        assert np.abs(merged - encoder.encode(texts, batch_size=4)).max() < 1e-5
