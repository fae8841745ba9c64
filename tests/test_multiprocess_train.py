"""`lm2vec train` under torchrun with 2 CPU processes (gloo) equals one process with the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


def _train(tmp_path, name, model_dir, data, batch, processes):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(RECIPE.format(model=model_dir, data=data, batch=batch))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = launcher + ["-m", "lm2vec.cli", "train", str(recipe), "-o", str(tmp_path / name), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(tmp_path / name / "encoder" / "model.safetensors")


def test_two_processes_match_one_process_with_the_concatenated_batch(tmp_path):
    model_dir, data = _write_inputs(tmp_path)
    two = _train(tmp_path, "two", model_dir, data, batch=4, processes=2)
    one = _train(tmp_path, "one", model_dir, data, batch=8, processes=1)
    base = load_file(model_dir / "model.safetensors")
    change = max((one[k] - base["model." + k]).abs().max().item() for k in one)
    # Two processes sum the same float32 gradients in another order (gloo all-reduce): each gradient
    # differs by a few ulps, and AdamW turns any gradient into a step of at most ~lr, so the runs can
    # drift apart by a small fraction of how far training moved the weights, on any machine. A twentieth
    # of that movement is far below what a wrong split (a lost or doubled row) gives: the whole movement.
    assert change > 1e-4, f"training moved the weights by only {change}: the check would prove nothing"
    tolerance = change / 20
    for key in one:
        assert torch.allclose(two[key], one[key], atol=tolerance), key
