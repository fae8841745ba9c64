"""`lm2vec encode` on every input format, in input order, and clean errors for bad rows."""

from __future__ import annotations

import numpy as np
from conftest import tiny_encoder
from typer.testing import CliRunner

from lm2vec.cli import app


def test_encode_txt_and_jsonl_match_the_library(tmp_path):
    encoder = tiny_encoder()
    encoder.save_pretrained(tmp_path / "model")
    (tmp_path / "in.txt").write_text("one text\ntwo texts here\n")
    (tmp_path / "in.jsonl").write_text('{"text": "a b", "instruction": "Retrieve:"}\n{"text": "c d"}\n')
    runner = CliRunner()
    for name, expected in [("in.txt", ["one text", "two texts here"]), ("in.jsonl", [("Retrieve:", "a b"), "c d"])]:
        result = runner.invoke(app, ["encode", "-m", str(tmp_path / "model"), "-i", str(tmp_path / name),
                                     "-o", str(tmp_path / f"{name}.npy"), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert np.abs(np.load(tmp_path / f"{name}.npy") - encoder.encode(expected)).max() < 1e-5


def test_encode_reports_a_bad_row_with_its_line(tmp_path):
    tiny_encoder().save_pretrained(tmp_path / "model")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n')
    result = CliRunner().invoke(app, ["encode", "-m", str(tmp_path / "model"), "-i", str(tmp_path / "bad.jsonl"),
                                      "-o", str(tmp_path / "out.npy")])
    assert result.exit_code != 0 and "bad.jsonl:2" in str(result.exception)
    assert not (tmp_path / "out.npy").exists()


def test_encode_rejects_an_empty_input_before_loading_anything(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    result = CliRunner().invoke(app, ["encode", "-m", str(tmp_path / "no-model"), "-i", str(tmp_path / "empty.txt"),
                                      "-o", str(tmp_path / "out.npy")])
    assert result.exit_code == 2 and "holds no texts" in result.output
    assert not (tmp_path / "out.npy").exists()


def test_encode_dimensions_and_precision_match_the_library(tmp_path):
    """Shards hold truncated float vectors; uint8 ranges come from the whole merged input, as in one
    `encode` call (codes may move by one bucket where float rounding differs between batchings)."""
    encoder = tiny_encoder()
    encoder.save_pretrained(tmp_path / "model")
    texts = [f"text {i} about {'cats ' * (i % 4)}and dogs" for i in range(7)]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    result = CliRunner().invoke(app, ["encode", "-m", str(tmp_path / "model"), "-i", str(tmp_path / "in.txt"),
                                      "-o", str(tmp_path / "out.npy"), "--device", "cpu", "--shard-size", "2",
                                      "--dimensions", "16", "--normalize", "--precision", "uint8"])
    assert result.exit_code == 0, result.output
    out = np.load(tmp_path / "out.npy")
    want = encoder.encode(texts, dimensions=16, normalize=True, precision="uint8")
    assert out.dtype == np.uint8 and out.shape == (7, 16)
    assert np.abs(out.astype(int) - want).max() <= 1


def test_encode_rejects_an_unknown_precision_before_loading_anything(tmp_path):
    (tmp_path / "in.txt").write_text("a text\n")
    result = CliRunner().invoke(app, ["encode", "-m", str(tmp_path / "no-model"), "-i", str(tmp_path / "in.txt"),
                                      "-o", str(tmp_path / "out.npy"), "--precision", "int4"])
    assert result.exit_code == 2 and "unknown precision 'int4'" in result.output


def test_demo_verdict_needs_every_paraphrase_pair_above_every_unrelated_pair():
    from lm2vec.cli import _verdict, worst_ranking

    good = np.eye(6)[[0, 0, 1, 1, 2, 2]] + 0.1  # sentences 2k and 2k+1 share a direction
    good /= np.linalg.norm(good, axis=1, keepdims=True)
    lowest, highest, _ = worst_ranking(good)
    assert lowest > highest and "every paraphrase pair" in _verdict(good)
    bad = good.copy()
    bad[5] = bad[0]  # sentence 5 now equals sentence 0: an unrelated pair as close as can be
    lowest, highest, pair = worst_ranking(bad)
    assert pair == (0, 5) and highest > lowest and "not there yet" in _verdict(bad)
