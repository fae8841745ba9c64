"""`lm2vec train` on 2 CPU processes (gloo), launched by torchrun or `accelerate launch`, with DDP or FSDP,
equals one process with the whole batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from conftest import byte_tokenizer, tiny_model
from safetensors.torch import load_file

RECIPE = """
model: {model}
max_length: 32
stages:
  - name: supervised
    objective: supervised
    data: {data}
    max_steps: 3
    batch_size: {batch}
    max_length: 32
    lr: 0.003
    warmup_steps: 0
    attention_dropout: 0.0   # no randomness, so both runs must agree to float precision
    precision: fp32          # bf16 base weights would round the two runs apart
    lora: {{dropout: 0.0}}
"""


def _write_inputs(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model("llama", causal_lm=True).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    rows = [{"query": f"query number {i} about {w}", "positive": f"a passage on {w} {i}", "negatives": [f"off {i}"]}
            for i, w in enumerate(["cats", "dogs", "birds", "trees", "rivers", "hills", "boats", "cars"] * 2)]
    data = tmp_path / "triplets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, data


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launcher(kind: str, processes: int) -> list[str]:
    if kind == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    # on a machine without GPUs `--multi_gpu` is what makes accelerate start N processes (torchrun inside)
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port())]


def _train(tmp_path, name, model_dir, data, batch, processes, launcher="torchrun", overrides=(), resume=False):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(RECIPE.format(model=model_dir, data=data, batch=batch))
    command = _launcher(launcher, processes) + ["-m", "lm2vec.cli", "train", str(recipe), "-o", str(tmp_path / name),
                                                "--device", "cpu", *overrides] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(tmp_path / name / "encoder" / "model.safetensors")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The model, the data and the one-process reference (batch 8), shared by every launcher's test."""
    tmp_path = tmp_path_factory.mktemp("reference")
    model_dir, data = _write_inputs(tmp_path)
    one = _train(tmp_path, "one", model_dir, data, batch=8, processes=1)
    base = load_file(model_dir / "model.safetensors")
    change = max((one[k] - base["model." + k]).abs().max().item() for k in one)
    # Two processes sum the same float32 gradients in another order (gloo all-reduce): each gradient
    # differs by a few ulps, and AdamW turns any gradient into a step of at most ~lr, so the runs can
    # drift apart by a small fraction of how far training moved the weights, on any machine. A twentieth
    # of that movement is far below what a wrong split (a lost or doubled row) gives: the whole movement.
    assert change > 1e-4, f"training moved the weights by only {change}: the check would prove nothing"
    return model_dir, data, one, change / 20


def _assert_same_weights(two: dict, one: dict, tolerance: float) -> None:
    assert two.keys() == one.keys()
    for key in one:
        assert torch.allclose(two[key], one[key], atol=tolerance), key


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_match_one_process_with_the_concatenated_batch(tmp_path, inputs, launcher):
    model_dir, data, one, tolerance = inputs
    two = _train(tmp_path, "two", model_dir, data, batch=4, processes=2, launcher=launcher)
    _assert_same_weights(two, one, tolerance)


def test_fsdp_with_gradcache_and_checkpoints_matches_one_process_and_resumes_exactly(tmp_path, inputs):
    """FSDP2 (sharded LoRA and AdamW states) on 2 gloo processes, the batch embedded 2 rows at a time
    (GradCache's no-sync passes), dev evaluation on both processes, a checkpoint at step 2 gathered from
    the shards; then a resume from that checkpoint (re-sharded on load) must end where the uninterrupted
    run ended."""
    model_dir, data, one, tolerance = inputs
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"sentence1": f"a cat {i}", "sentence2": f"a dog {i * 3}", "score": i % 5}) + "\n"
                           for i in range(12)))
    overrides = ["distributed=fsdp", "supervised.mini_batch_size=2", "supervised.save_every=2",
                 "supervised.eval_every=2", f"supervised.eval_data={dev}"]
    fsdp = _train(tmp_path, "fsdp", model_dir, data, batch=4, processes=2, overrides=overrides)
    _assert_same_weights(fsdp, one, tolerance)
    log = [json.loads(line) for line in (tmp_path / "fsdp" / "stage1-supervised" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "dev_spearman" in r] == [0, 2, 3]
    stage = tmp_path / "fsdp" / "stage1-supervised"
    assert (stage / "checkpoints" / "step-0000002").is_dir() and (stage / "adapter" / "adapter_model.safetensors").is_file()
    (stage / "DONE").unlink()  # as if the run had died after its step-2 checkpoint
    shutil.rmtree(tmp_path / "fsdp" / "encoder")
    resumed = _train(tmp_path, "fsdp", model_dir, data, batch=4, processes=2, overrides=overrides, resume=True)
    _assert_same_weights(resumed, fsdp, 1e-6)



@pytest.mark.parametrize("kind", ["latent", "contextual"])
def test_ddp_averages_the_gradients_of_the_encoders_extra_modules(tmp_path, inputs, pre_encoder_dir, kind):
    """The extra modules (latent attention; the contextual token's MLP, fed to the DDP-wrapped model as
    input embeddings) sit outside the module DDP wraps; the loop averages their gradients itself
    (Engine.average): 2 processes x batch 4 end with the LoRA and extra weights of 1 process x batch 8."""
    from transformers import AutoModel

    from lm2vec import EncoderConfig
    from lm2vec.core.extras import EXTRAS_FILE, build_extras, extras_state

    model_dir, data, _, _ = inputs
    encoder = ({"latent_attention": True, "latent_attention_latents": 8, "latent_attention_heads": 2}
               if kind == "latent" else {"contextual": str(pre_encoder_dir)})
    settings = [f"encoder.{k}={json.dumps(v)}" for k, v in encoder.items()]
    settings += [] if kind == "latent" else ["bidirectional=false", "pooling=last"]  # Causal2Vec's setting
    one = _train(tmp_path, "one", model_dir, data, batch=8, processes=1, overrides=settings)
    two = _train(tmp_path, "two", model_dir, data, batch=4, processes=2, overrides=settings)
    base = load_file(model_dir / "model.safetensors")
    _assert_same_weights(two, one, max((one[k] - base["model." + k]).abs().max().item() for k in one) / 20)
    fresh = extras_state(build_extras(EncoderConfig(**encoder), AutoModel.from_pretrained(model_dir), byte_tokenizer()))
    one_extras, two_extras = (load_file(tmp_path / name / "encoder" / EXTRAS_FILE) for name in ("one", "two"))
    change = max((one_extras[k] - fresh[k]).abs().max().item() for k in fresh)
    assert change > 1e-4, f"training moved the extra modules by only {change}"
    _assert_same_weights(two_extras, one_extras, change / 20)
