"""The training loop trains the encoder's extra modules (latent-attention pooling, the contextual token's
MLP) with LoRA: in the optimiser, in float32, checkpointed and restored on resume, kept by keep_best,
saved with the encoder and its adapter; GradCache and recipes handle them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import killed_at_step
from safetensors.torch import load_file

from lm2vec import Encoder
from lm2vec.training.loop import StageRunner, train
from lm2vec.training.recipe import Recipe, RecipeError, StageConfig

SENTENCES = [f"sentence {i}: the {w} sat on the {v} near {i % 7} trees." for i, (w, v) in
             enumerate((w, v) for w in ("cat", "dog", "bird", "fox") for v in ("mat", "log", "rug", "hill", "box"))]
EXTRAS = "lm2vec_extras.safetensors"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    (folder / "corpus.txt").write_text("\n".join(SENTENCES) + "\n")
    rows = [{"query": s, "positive": s.replace("sat", "rested"), "negatives": [SENTENCES[(i + 5) % len(SENTENCES)]]}
            for i, s in enumerate(SENTENCES)]
    (folder / "triplets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "dev.jsonl").write_text("".join(json.dumps({"sentence1": s, "sentence2": SENTENCES[(i * 7) % 20],
                                                          "score": i % 5}) + "\n" for i, s in enumerate(SENTENCES)))
    return folder


def _settings(kind: str, pre_encoder_dir) -> dict:
    """Recipe keys of each extra module (the contextual token's LLM stays causal, as in Causal2Vec)."""
    if kind == "latent":
        return dict(encoder={"latent_attention": True, "latent_attention_latents": 16})
    return dict(encoder={"contextual": str(pre_encoder_dir)}, bidirectional=False, pooling="last")


def _stage(objective, data, **overrides):
    source = data / ("triplets.jsonl" if objective == "supervised" else "corpus.txt")
    settings = dict(objective=objective, data=str(source), max_steps=12, batch_size=4, max_length=32, lr=3e-3,
                    warmup_steps=0, save_every=100, attention_dropout=0.1)
    return StageConfig(**{**settings, **overrides})


def _run(model_dir, stage, out, settings, resume=False):
    recipe = Recipe(stages=[stage], model=str(model_dir), max_length=32, **settings)
    runner = StageRunner(recipe, stage, str(model_dir), out / "stage", out / "encoder", resume=resume, device="cpu")
    runner.run()
    return runner, [json.loads(line)["loss"] for line in (out / "stage" / "log.jsonl").read_text().splitlines()
                    if "loss" in json.loads(line)]


@pytest.mark.parametrize("objective", ["supervised", "simcse"])
@pytest.mark.parametrize("kind", ["latent", "contextual"])
def test_training_lowers_the_loss_and_trains_the_module(kind, objective, model_dir, pre_encoder_dir, data, tmp_path):
    settings = _settings(kind, pre_encoder_dir)
    runner, losses = _run(model_dir, _stage(objective, data), tmp_path, settings)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
    extras = runner.encoder.extras
    trained = [p for p in extras.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert {id(p) for p in trained} <= {id(p) for group in runner.optimizer.param_groups for p in group["params"]}
    fresh = Encoder.from_pretrained(model_dir, device="cpu", **settings["encoder"],
                                    **{k: v for k, v in settings.items() if k != "encoder"}).extras
    saved = load_file(tmp_path / "encoder" / EXTRAS)
    moved = [k for k, v in fresh.state_dict().items() if k in saved and not torch.equal(v, saved[k])]
    assert len(moved) == len(saved)  # every trainable weight of the module changed
    if kind == "contextual":  # the pre-encoder is frozen: saved as it came
        encoder_before = fresh["contextual"].encoder.state_dict()
        encoder_after = extras["contextual"].encoder.state_dict()
        assert all(torch.equal(encoder_before[k], encoder_after[k]) for k in encoder_before)
    texts = SENTENCES[:3] + [("Retrieve:", "a bird on the hill")]
    reference = runner.encoder.encode(texts)
    for folder in (tmp_path / "encoder", tmp_path / "stage" / "adapter"):
        assert np.abs(Encoder.from_pretrained(folder, device="cpu").encode(texts) - reference).max() < 1e-5


@pytest.mark.parametrize("kind", ["latent", "contextual"])
def test_kill_and_resume_ends_with_the_same_weights(kind, model_dir, pre_encoder_dir, data, tmp_path, monkeypatch):
    settings, stage = _settings(kind, pre_encoder_dir), _stage("supervised", data, max_steps=6, save_every=2)
    _, straight = _run(model_dir, stage, tmp_path / "straight", settings)
    killed_at_step(monkeypatch, 4, lambda: _run(model_dir, stage, tmp_path / "resumed", settings))
    checkpoint = load_file(tmp_path / "resumed" / "stage" / "checkpoints" / "step-0000004" / "adapter.safetensors")
    assert any(k.startswith("lm2vec_extras.") for k in checkpoint)
    _, resumed = _run(model_dir, stage, tmp_path / "resumed", settings, resume=True)
    assert resumed == straight
    for name in ("model.safetensors", EXTRAS):
        a, b = load_file(tmp_path / "straight" / "encoder" / name), load_file(tmp_path / "resumed" / "encoder" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_keep_best_keeps_the_modules_weights_of_the_best_step(model_dir, pre_encoder_dir, data, tmp_path):
    stage = _stage("supervised", data, max_steps=6, eval_every=2, eval_data=str(data / "dev.jsonl"), keep_best=True)
    runner, _ = _run(model_dir, stage, tmp_path, _settings("latent", pre_encoder_dir))
    best = load_file(tmp_path / "stage" / "best" / "adapter.safetensors")
    saved = load_file(tmp_path / "encoder" / EXTRAS)
    kept = {k.removeprefix("lm2vec_extras."): v for k, v in best.items() if k.startswith("lm2vec_extras.")}
    assert kept and all(torch.equal(kept[k], saved[k]) for k in kept)


@pytest.mark.parametrize("kind", ["latent", "contextual"])
def test_gradcache_trains_the_modules_exactly_like_the_full_batch(kind, model_dir, pre_encoder_dir, data, tmp_path):
    """Chunks trim their own padding, the pre-encoder's inputs by their own mask: the loss curves agree."""
    settings = _settings(kind, pre_encoder_dir)
    stage = dict(max_steps=3, batch_size=8, attention_dropout=0.0, precision="fp32", lora={"dropout": 0.0})
    _, plain = _run(model_dir, _stage("supervised", data, **stage), tmp_path / "plain", settings)
    _, cached = _run(model_dir, _stage("supervised", data, mini_batch_size=3, **stage), tmp_path / "cached", settings)
    assert cached == pytest.approx(plain, abs=1e-5)


def test_a_later_stage_starts_from_the_modules_an_earlier_one_trained(model_dir, pre_encoder_dir, data, tmp_path):
    stages = [_stage("mntp", data, max_steps=2), _stage("supervised", data, max_steps=2)]
    final = train(Recipe(stages=stages, model=str(model_dir), max_length=32, **_settings("latent", None)), tmp_path,
                  device="cpu")
    assert json.loads((final / "lm2vec_config.json").read_text())["latent_attention"] is True
    assert (tmp_path / "stage1-mntp" / "merged" / EXTRAS).is_file() and (final / EXTRAS).is_file()


def test_recipe_encoder_settings_are_checked():
    stage = StageConfig(objective="supervised", data="x")
    with pytest.raises(RecipeError, match="unknown keys"):
        Recipe(stages=[stage], encoder={"latent_atention": True})
    with pytest.raises(RecipeError, match="set by the recipe itself"):
        Recipe(stages=[stage], encoder={"pooling": "last"})
    with pytest.raises(RecipeError, match="encoder: contextual_output must be one of"):
        Recipe(stages=[stage], encoder={"contextual": "x", "contextual_output": "both"})
    with pytest.raises(RecipeError, match="MNTP does not support it"):
        Recipe(stages=[StageConfig(objective="mntp", data="x"), stage], encoder={"contextual": "x"})


def test_fsdp_refuses_the_extra_modules():
    """FSDP shards the backbone only: the extras would be neither sharded nor clipped with it (DDP trains them)."""
    stage = StageConfig(objective="simcse", data="x")
    with pytest.raises(RecipeError, match="fsdp shards the backbone only.*latent_attention.*distributed: ddp"):
        Recipe(stages=[stage], distributed="fsdp", encoder={"latent_attention": True})
    assert Recipe(stages=[stage], distributed="ddp", encoder={"latent_attention": True}).distributed == "ddp"
