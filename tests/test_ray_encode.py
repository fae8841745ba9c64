"""`lm2vec encode --engine ray`: a local 2-actor Ray writes what a single-process encode writes, and a
killed run resumes, re-encoding only the shards it had not written (shards either engine can reuse)."""

from __future__ import annotations

import builtins
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import tiny_encoder
from typer.testing import CliRunner

from lm2vec.cli import app
from lm2vec.core.loading import MissingPackageError
from lm2vec.core.ray_encode import ModelSpec, RayOptions, encode_with_ray, import_ray
from lm2vec.core.sharded import encode_sharded, shard_dir

TEXTS = [f"text number {i} " + "word " * (i * 7 % 13) for i in range(23)]  # 5 shards of 5 (the last 3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray") / "model"
    tiny_encoder().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(model_dir):
    from lm2vec import Encoder

    return Encoder.from_pretrained(model_dir, device="cpu").encode(TEXTS, batch_size=4)


@pytest.fixture()
def local_ray():
    """One local Ray for the library tests (the CLI test starts and stops its own, as users get it)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_cli_with_a_local_two_worker_ray_writes_what_one_process_writes(model_dir, tmp_path):
    pytest.importorskip("ray")
    (tmp_path / "in.txt").write_text("".join(text + "\n" for text in TEXTS))
    runner, common = CliRunner(), ["encode", "-m", str(model_dir), "-i", str(tmp_path / "in.txt"), "--device", "cpu",
                                   "--batch-size", "4", "--shard-size", "5"]
    plain = runner.invoke(app, [*common, "-o", str(tmp_path / "plain.npy")])
    assert plain.exit_code == 0, plain.output
    on_ray = runner.invoke(app, [*common, "-o", str(tmp_path / "ray.npy"), "--engine", "ray", "--ray-workers", "2"])
    assert on_ray.exit_code == 0, on_ray.output
    assert "wrote 23 x 64 vectors" in on_ray.output
    assert np.abs(np.load(tmp_path / "ray.npy") - np.load(tmp_path / "plain.npy")).max() < 1e-5
    assert not shard_dir(tmp_path / "ray.npy").exists(), "shards are removed once merged"


def test_a_killed_ray_run_resumes_without_re_encoding_written_shards(model_dir, reference, tmp_path, local_ray):
    out, spec, first = tmp_path / "vectors.npy", ModelSpec(str(model_dir)), []

    def killed_after_two(index: int) -> None:
        first.append(index)
        if len(first) == 2:
            raise KeyboardInterrupt  # the driver dies with 2 of 5 shards on disk

    options = RayOptions(workers=2, gpus_per_worker=0)
    with pytest.raises(KeyboardInterrupt):
        encode_with_ray(spec, TEXTS, out, shard_size=5, options=options, on_shard=killed_after_two, batch_size=4)
    written = sorted(shard_dir(out).glob("shard-*.npy"))
    assert len(written) == 2 and not out.exists()
    marked = np.load(written[0])
    np.save(written[0], np.full_like(marked, 7.0))  # re-encoding this shard would erase the mark
    second: list[int] = []
    vectors = encode_with_ray(spec, TEXTS, out, shard_size=5, options=options, on_shard=second.append, batch_size=4)
    assert sorted(second) == sorted(set(range(5)) - set(first)), "only the unwritten shards are encoded"
    is_marked = (np.asarray(vectors) == 7.0).all(axis=1)
    assert is_marked.sum() == len(marked)
    assert np.abs(np.asarray(vectors)[~is_marked] - reference[~is_marked]).max() < 1e-5


def test_ray_reuses_the_shards_of_a_torchrun_style_run(model_dir, reference, tmp_path, local_ray):
    """Same shard plan and manifest key: finished local shards are never encoded again on Ray."""
    from lm2vec import Encoder

    out = tmp_path / "vectors.npy"
    encode_sharded(Encoder.from_pretrained(model_dir, device="cpu"), TEXTS, out, shard_size=5, keep_shards=True,
                   batch_size=4)
    out.unlink()
    encoded: list[int] = []
    vectors = encode_with_ray(ModelSpec(str(model_dir)), TEXTS, out, shard_size=5, on_shard=encoded.append,
                              options=RayOptions(workers=2, gpus_per_worker=0), batch_size=4)
    assert encoded == [] and np.abs(np.asarray(vectors) - reference).max() < 1e-5


def test_without_ray_installed_the_error_names_the_package(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(MissingPackageError, match=r"pip install 'lm2vec\[ray\]'"):
        import_ray()


def test_a_running_cluster_given_by_address_gets_this_lm2vec(model_dir, reference, tmp_path):
    """A head started apart (as on a cluster) whose workers would import another lm2vec (here /work/main's,
    or none) from their own environment: the command ships its own package to them (py_modules) and
    leaves the cluster running. The head gets this process's RAY_AUTH_MODE (Ray reads it once, and turns
    token authentication on in a process that started a local Ray: earlier tests), so both sides agree."""
    ray = pytest.importorskip("ray")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=3", "--include-dashboard=false", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(120):  # until the head listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        options = RayOptions(address=f"127.0.0.1:{port}", workers=2, gpus_per_worker=0)
        vectors = encode_with_ray(ModelSpec(str(model_dir)), TEXTS, tmp_path / "vectors.npy", shard_size=5,
                                  options=options, batch_size=4)
        assert not ray.is_initialized(), "the connection this call opened is closed again"
        assert head.poll() is None, "the cluster it did not start keeps running"
        assert np.abs(np.asarray(vectors) - reference).max() < 1e-5
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=120)
