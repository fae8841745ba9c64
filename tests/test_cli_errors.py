"""The command line as a new user meets it: one `error:` line, the right exit status, no traceback,
no lost rows, no deleted files, outputs others can read."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_encoder

from lm2vec import cli
from lm2vec.cli import app
from lm2vec.cli_errors import run_cli

RECIPES = Path(__file__).resolve().parents[1] / "src" / "lm2vec" / "recipes"


def lm2vec(capsys, *argv: str) -> tuple[int, str]:
    """Run the CLI in-process as `main()` does; (exit status, stdout + stderr)."""
    status = run_cli(lambda **kw: app(args=list(argv), prog_name="lm2vec", **kw), list(argv))
    out = capsys.readouterr()
    return status, out.out + out.err


@pytest.fixture()
def deep(tmp_path):
    """A folder whose path is over 100 characters (rich must not wrap messages that name it)."""
    folder = tmp_path / ("nested-" * 8) / ("deeper-" * 8)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture()
def model(tmp_path):
    return tiny_encoder().save_pretrained(tmp_path / "model")


@pytest.mark.parametrize("argv, needle", [
    ([], "Usage"),
    (["encode", "-o", "x.npy"], "--input"),
    (["encode", "-i", "missing.txt", "-o", "x.npy"], "missing.txt"),
    (["encode", "-i", __file__, "-o", "x.npy", "--batch-size", "0"], "--batch-size"),
    (["frobnicate"], "frobnicate"),
])
def test_usage_errors_exit_2_with_one_line_and_no_traceback(capsys, argv, needle):
    status, output = lm2vec(capsys, *argv)
    assert status == 2 and needle in output and "Traceback" not in output, output
    if argv:
        assert output.startswith("error: ") and output.count("\n") == 1, output


def test_the_installed_command_exits_2_on_a_usage_error_and_0_on_help():
    run = [sys.executable, "-m", "lm2vec.cli"]
    bad = subprocess.run(run + ["encode"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error: " in bad.stderr and "Traceback" not in bad.stderr
    assert subprocess.run(run + ["--help"], capture_output=True, timeout=120).returncode == 0


def test_a_message_naming_a_long_path_stays_on_one_line(capsys, deep):
    (deep / "in.txt").write_text("")
    status, output = lm2vec(capsys, "encode", "-m", str(deep / "m"), "-i", str(deep / "in.txt"), "-o", "x.npy")
    assert status == 2 and f"{deep / 'in.txt'} holds no texts" in output, output


def test_a_blank_line_is_an_error_naming_file_and_line_and_nothing_is_written(capsys, model, tmp_path):
    (tmp_path / "in.txt").write_text("one\n\nthree\n")
    status, output = lm2vec(capsys, "encode", "-m", str(model), "-i", str(tmp_path / "in.txt"), "-o",
                            str(tmp_path / "out.npy"), "--device", "cpu")
    assert status == 2 and f"{tmp_path / 'in.txt'}:2" in output and "--skip-empty" in output, output
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("name, content", [
    ("in.txt", "one\n\nthree\n"),
    ("in.jsonl", '{"text": "one"}\n{"text": ""}\n{"text": "three"}\n'),
    ("in.csv", "text\none\n\"\"\nthree\n"),
])
def test_skip_empty_leaves_rows_out_and_writes_which_row_each_vector_is(capsys, model, tmp_path, name, content):
    (tmp_path / name).write_text(content)
    out = tmp_path / "out.npy"
    status, output = lm2vec(capsys, "encode", "-m", str(model), "-i", str(tmp_path / name), "-o", str(out),
                            "--skip-empty", "--device", "cpu")
    assert status == 0, output
    assert np.load(tmp_path / "out.rows.npy").tolist() == [0, 2]
    assert np.abs(np.load(out) - tiny_encoder().encode(["one", "three"])).max() < 1e-5


def test_encode_refuses_to_overwrite_unless_asked(capsys, model, tmp_path):
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    out = tmp_path / "out.npy"
    out.write_bytes(b"precious")
    argv = ["encode", "-m", str(model), "-i", str(tmp_path / "in.txt"), "-o", str(out), "--device", "cpu"]
    status, output = lm2vec(capsys, *argv)
    assert status == 2 and "--overwrite" in output and out.read_bytes() == b"precious"
    assert lm2vec(capsys, *argv, "--overwrite")[0] == 0 and np.load(out).shape == (2, 64)


def test_unknown_model_fails_fast_naming_the_builtins(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "in.txt").write_text("one\n")
    for name in ("smollm-9000", "./no/such/folder"):
        started = time.monotonic()
        status, output = lm2vec(capsys, "encode", "-m", name, "-i", str(tmp_path / "in.txt"), "-o",
                                str(tmp_path / "o.npy"))
        assert status == 2 and name in output and "smollm2-135m" in output and "Traceback" not in output, output
        assert time.monotonic() - started < 10, "no minute of hub retries"


def test_bad_recipe_values_name_the_stage_and_the_key(capsys, tmp_path):
    recipe = str(RECIPES / "llm2vec-unsupervised.yaml")
    status, output = lm2vec(capsys, "train", recipe, "-o", str(tmp_path / "run"), "mntp.max_steps=abc")
    assert status == 2 and "stage 'mntp': max_steps must be an integer, got 'abc'" in output, output
    status, output = lm2vec(capsys, "train", recipe, "-o", str(tmp_path / "run"), "simcse.lerning_rate=1")
    assert status == 2 and "stage 'simcse': unknown key 'lerning_rate'" in output, output
    (tmp_path / "broken.yaml").write_text("stages: [\n")
    status, output = lm2vec(capsys, "train", str(tmp_path / "broken.yaml"), "-o", str(tmp_path / "run"))
    assert status == 2 and output.strip().count("\n") == 0, output  # one line, not PyYAML's report
    assert "broken.yaml is not valid YAML at line 2" in output, output
    status, output = lm2vec(capsys, "train", "no-such-recipe", "-o", str(tmp_path / "run"))
    assert status == 2 and "built-in: annealed-simcse, demo, llm2vec-supervised, llm2vec-unsupervised, uni-simcse" in output, output


def test_a_truncated_weights_file_is_named_and_exits_1(capsys, model, tmp_path):
    weights = Path(model) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (tmp_path / "in.txt").write_text("one\n")
    status, output = lm2vec(capsys, "encode", "-m", str(model), "-i", str(tmp_path / "in.txt"), "-o",
                            str(tmp_path / "o.npy"), "--device", "cpu")
    assert status == 1 and "model.safetensors is truncated or corrupt" in output and "Traceback" not in output


def test_unknown_eval_task_fails_before_the_model_loads(capsys, tmp_path):
    status, output = lm2vec(capsys, "eval", str(tmp_path / "no-model-here"), "--tasks", "STSBenchmarkk",
                            "--data-dir", str(tmp_path))
    assert status == 2 and "did you mean 'STSBenchmark'" in output, output


def test_ctrl_c_exits_130_and_a_crash_exits_1_with_the_traceback_only_on_debug(capsys, tmp_path, monkeypatch):
    (tmp_path / "in.txt").write_text("one\n")
    argv = ["encode", "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy")]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lm2vec.core.encoder.Encoder.from_pretrained", interrupted)
    status, output = lm2vec(capsys, *argv)
    assert status == 130 and "interrupted" in output

    def broken(*args, **kwargs):
        raise RuntimeError("the device fell over")

    monkeypatch.setattr("lm2vec.core.encoder.Encoder.from_pretrained", broken)
    status, output = lm2vec(capsys, *argv)
    assert status == 1 and "RuntimeError: the device fell over" in output and "Traceback" not in output
    with pytest.raises(RuntimeError, match="fell over"):
        lm2vec(capsys, "--debug", *argv)


def test_outputs_get_the_umask_mode_never_tighter_than_what_they_replace(tmp_path):
    from lm2vec.io import save_npy_atomic

    old = os.umask(0o022)
    try:
        save_npy_atomic(tmp_path / "a.npy", np.zeros(3))
        assert stat.S_IMODE((tmp_path / "a.npy").stat().st_mode) == 0o644
        (tmp_path / "a.npy").chmod(0o664)
        save_npy_atomic(tmp_path / "a.npy", np.ones(3))
        assert stat.S_IMODE((tmp_path / "a.npy").stat().st_mode) == 0o664
        folder = tiny_encoder().save_pretrained(tmp_path / "enc")
        assert stat.S_IMODE(Path(folder).stat().st_mode) == 0o755
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in Path(folder).iterdir()}
        assert "model.safetensors" in modes  # written by transformers through its own temp file
        assert set(modes.values()) == {0o644}, modes
    finally:
        os.umask(old)


def test_export_never_deletes_files_it_did_not_write(capsys, model, tmp_path):
    target = tmp_path / "shared-folder"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        status, output = lm2vec(capsys, "export", str(model), str(target), "--format", "merged", *extra)
        assert status == 2 and (target / "notes.txt").read_text() == "mine", output
    fresh = tmp_path / "export"
    assert lm2vec(capsys, "export", str(model), str(fresh), "--format", "merged")[0] == 0
    assert lm2vec(capsys, "export", str(model), str(fresh), "--format", "merged")[0] == 2
    assert lm2vec(capsys, "export", str(model), str(fresh), "--format", "merged", "--overwrite")[0] == 0


def test_every_option_has_help_text_and_serve_defaults_to_the_builtin_model():
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"lm2vec {name} {param.opts[0]} has no --help text"
    serve = {p.name: p for p in group.commands["serve"].params}
    assert serve["model"].default == cli.DEFAULT_MODEL and not serve["model"].required


def test_a_corrupt_adapter_is_named(tmp_path):
    from safetensors.torch import load_file

    from lm2vec.core.encoder import CheckpointError, checkpoint_errors

    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(CheckpointError, match="adapter_model.safetensors is truncated or corrupt"):
        with checkpoint_errors(str(tmp_path)):
            load_file(str(tmp_path / "adapter_model.safetensors"))
