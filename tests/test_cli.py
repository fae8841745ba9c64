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
    (tmp_path / "empty.txt").write_text("\n")
    result = CliRunner().invoke(app, ["encode", "-m", str(tmp_path / "no-model"), "-i", str(tmp_path / "empty.txt"),
                                      "-o", str(tmp_path / "out.npy")])
    assert result.exit_code == 2 and "holds no texts" in result.output
    assert not (tmp_path / "out.npy").exists()
