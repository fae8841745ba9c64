"""bench/gpu_quality.sh without SmolLM2: the script parses, and `import` rebuilds, on a base found in
another place, the very encoders that the packed adapters make (tiny random model, a few seconds)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import byte_tokenizer, tiny_model

from lm2vec import Encoder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_quality.sh"
sys.path.insert(0, str(ROOT / "bench"))
import gpu_quality  # noqa: E402

SENTENCES = [f"sentence {i}: the {w} sat on the {v}." for i, (w, v) in
             enumerate((w, v) for w in ("cat", "dog", "owl", "fox") for v in ("mat", "log", "rug", "hill"))]
TEXTS = ["a cat on the mat", "the fox", "an owl sat on a log near the hill"]


def test_script_parses_and_prints_its_usage():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    usage = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert usage.returncode == 2 and 'carry=[".gpu/part2"]' in usage.stdout


def test_train_runs_quality_py_where_mteb_is_missing():
    code = ("import runpy, sys; sys.modules['mteb'] = None; "
            "sys.argv = ['gpu_quality.py', 'train', '--', '--help']; "
            "runpy.run_path('bench/gpu_quality.py', run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--train-only" in done.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """mntp, simcse and supervised stages trained by bench/sweep.py's run_variant, as quality.py trains
    them on the GPU (one <objective>-<hash>/ folder per stage, MNTP shared by the two later stages)."""
    import sweep

    root = tmp_path_factory.mktemp("gpu")
    base = root / "base"
    tiny_model("llama", causal_lm=True).save_pretrained(base)
    byte_tokenizer().save_pretrained(base)
    corpus, triplets, dev = root / "corpus.txt", root / "triplets.jsonl", root / "dev.jsonl"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    triplets.write_text("".join(json.dumps({"query": s, "positive": s.replace("sat", "rested"),
                                            "negatives": [SENTENCES[(i + 5) % 16]]}) + "\n" for i, s in enumerate(SENTENCES)))
    dev.write_text("".join(json.dumps({"sentence1": s, "sentence2": SENTENCES[(i + 3) % 16], "score": i % 5}) + "\n"
                           for i, s in enumerate(SENTENCES)))
    work = root / "cache" / "work" / "gpu"
    args = argparse.Namespace(model=str(base), data_dir=root, corpus=str(corpus), simcse_corpus=None,
                              triplets=str(triplets), dev=str(dev), dev_limit=500, work=work, threads=None,
                              doc_queries=0)
    common = dict(max_steps=2, batch_size=4, max_length=32, lr=1e-2, warmup_steps=0, eval_every=1)
    mntp = dict(objective="mntp", **common)
    encoders = {name: sweep.run_variant(name, (True, "mean", stages), args)["encoder"] for name, stages in (
        ("mntp", [mntp]), ("simcse", [mntp, dict(objective="simcse", **common)]),
        ("supervised", [mntp, dict(objective="supervised", **common)]))}
    expected = {o: Encoder.from_pretrained(path, device="cpu").encode(TEXTS) for o, path in encoders.items()}
    return root, base, work, expected


def test_pack_then_import_rebuilds_the_same_encoders(trained, tmp_path, monkeypatch):
    root, base, work, expected = trained
    out = tmp_path / "out"
    monkeypatch.setattr(gpu_quality, "PART_BYTES", 40_000)  # several parts: their order matters
    monkeypatch.setattr(gpu_quality, "MAX_PARTS", 100)
    gpu_quality.cmd_pack(argparse.Namespace(work=str(work), out=str(out), model=str(base), gguf_sha256=None,
                                            train_rc=0, wall=1, compresslevel=1))
    info = json.loads((out / gpu_quality.INFO).read_text())
    assert info["complete"] and info["parts"] > 1 and info["device_slug"] == "cpu"
    assert all(s["done"] and s["steps"] == 2 for s in info["stages"].values())
    # The other machine: the base elsewhere, the training directories gone.
    moved = tmp_path / "local-base"
    shutil.copytree(base, moved)
    env = {**os.environ, "MODEL": str(moved), "RESULTS": str(tmp_path / "results"), "PY": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT), "import", str(out), "--dest", str(tmp_path / "import")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "base weights: the same as those trained on there" in done.stdout
    assert "--encoders mntp=" in done.stdout and "--tag gpu-cpu" in done.stdout
    for objective, vectors in expected.items():
        rebuilt = Encoder.from_pretrained(tmp_path / "import" / objective, device="cpu")
        assert np.abs(rebuilt.encode(TEXTS) - vectors).max() < 1e-5, objective
    config = json.loads((tmp_path / "import" / "simcse" / "lm2vec_config.json").read_text())
    assert config["base_model"] == str((tmp_path / "import" / "mntp").resolve())
    assert list(config["training"]) == ["mntp", "simcse"]
    [logs] = (tmp_path / "results").glob("quality-gpu-cpu-*-logs.json")
    payload = json.loads(logs.read_text())
    assert [p["stage"] for p in payload["dev_curves"]["simcse"]] == ["mntp"] * 3 + ["simcse"] * 3
    assert len(payload["logs"]["supervised"]) == 3  # step 0, 1 and 2 (each with the dev score)


def test_import_refuses_another_base(trained, tmp_path):
    root, base, work, _ = trained
    out = tmp_path / "out"
    gpu_quality.cmd_pack(argparse.Namespace(work=str(work), out=str(out), model=str(base), gguf_sha256=None,
                                            train_rc=0, wall=1, compresslevel=1))
    other = tmp_path / "other"
    tiny_model("llama", causal_lm=True, seed=1).save_pretrained(other)
    byte_tokenizer().save_pretrained(other)
    args = argparse.Namespace(dir=str(out), model=str(other), dest=str(tmp_path / "import"), results=str(tmp_path),
                              data_dir="data", evaluate=False, allow_base_mismatch=False)
    with pytest.raises(SystemExit, match="differs from the weights trained on there"):
        gpu_quality.cmd_import(args)
