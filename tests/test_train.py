"""The training loop on a tiny model: losses fall, resume is exact, checkpoints are safe, adapters load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import killed_at_step
from safetensors.torch import load_file

from lm2vec import Encoder
from lm2vec.training import checkpoint as ckpt
from lm2vec.training.loop import StageRunner, linear_schedule, train
from lm2vec.training.order import batch_indices
from lm2vec.training.recipe import Recipe, RecipeError, StageConfig, load_recipe

SENTENCES = [f"sentence {i}: the {w} sat on the {v} near {i % 7} trees." for i, (w, v) in
             enumerate((w, v) for w in ("cat", "dog", "bird", "fox") for v in ("mat", "log", "rug", "hill", "box"))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


@pytest.fixture(scope="module")
def triplets(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "triplets.jsonl"
    rows = [{"query": s, "positive": s.replace("sat", "rested"), "negatives": [SENTENCES[(i + 5) % len(SENTENCES)]]}
            for i, s in enumerate(SENTENCES)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _stage(objective, data, **overrides):
    settings = dict(objective=objective, data=str(data), max_steps=12, batch_size=4, max_length=32, lr=3e-3,
                    warmup_steps=0, save_every=100, attention_dropout=0.1)
    return StageConfig(**{**settings, **overrides})


def _run(model_dir, stage, out, resume=False):
    recipe = Recipe(stages=[stage], model=str(model_dir), max_length=32)
    runner = StageRunner(recipe, stage, str(model_dir), out / "stage", out / "encoder", resume=resume, device="cpu")
    runner.run()
    return [json.loads(line)["loss"] for line in (out / "stage" / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["mntp", "simcse", "supervised"])
def test_training_lowers_the_loss(objective, model_dir, corpus, triplets, tmp_path):
    data = triplets if objective == "supervised" else corpus
    losses = _run(model_dir, _stage(objective, data, mask_rate=0.3), tmp_path)
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
    assert (tmp_path / "stage" / "loss.png").stat().st_size > 1000
    encoder = Encoder.from_pretrained(tmp_path / "encoder", device="cpu")
    assert encoder.config.training[objective]["objective"] == objective
    assert encoder.encode(["a cat"]).shape == (1, 64)


@pytest.mark.parametrize(("objective", "extra"), [("simcse", {}), ("supervised", {"mini_batch_size": 3})])
def test_matryoshka_training_lowers_the_loss(objective, extra, model_dir, corpus, triplets, tmp_path):
    """The sum over prefixes falls like the plain loss, GradCache included; the dims are recorded."""
    data = triplets if objective == "supervised" else corpus
    stage = _stage(objective, data, matryoshka_dims=[64, 32, 8], matryoshka_weights=[1.0, 1.0, 0.5], **extra)
    losses = _run(model_dir, stage, tmp_path)
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
    encoder = Encoder.from_pretrained(tmp_path / "encoder", device="cpu")
    assert encoder.config.training[objective]["matryoshka_dims"] == [64, 32, 8]
    assert encoder.encode(["a cat", "a dog"], dimensions=8, normalize=True).shape == (2, 8)


def test_simcse_views_really_differ_during_training(model_dir, corpus, tmp_path):
    """SimCSE learns nothing if both views are equal (dropout off): the loop's model must differ per call."""
    stage = _stage("simcse", corpus, attention_dropout=0.3)
    recipe = Recipe(stages=[stage], model=str(model_dir), max_length=32)
    runner = StageRunner(recipe, stage, str(model_dir), tmp_path / "stage", tmp_path / "encoder", device="cpu")
    runner.setup()
    batch = runner.task.collate(SENTENCES[:4], torch.Generator())
    (_, first), (_, second) = runner.task.embedding_sides(batch)
    with torch.no_grad():
        view1, view2 = runner.encoder.embed(first), runner.encoder.embed(second)
    assert (view1 - view2).abs().max() > 1e-4


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_kill_and_resume_ends_with_the_same_weights(finetune, model_dir, corpus, tmp_path, monkeypatch):
    stage = _stage("simcse", corpus, max_steps=6, save_every=2, finetune=finetune, lr=3e-3 if finetune == "lora" else 3e-4)
    _run(model_dir, stage, tmp_path / "straight")
    killed_at_step(monkeypatch, 4, lambda: _run(model_dir, stage, tmp_path / "resumed"))
    losses = _run(model_dir, stage, tmp_path / "resumed", resume=True)
    a = load_file(tmp_path / "straight" / "encoder" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "encoder" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight = [json.loads(x)["loss"] for x in (tmp_path / "straight/stage/log.jsonl").read_text().splitlines()]
    assert losses == straight  # the log is continuous, with no duplicated steps


@pytest.mark.parametrize("objective", ["mntp", "simcse"])
def test_full_finetuning_trains_every_weight_but_the_embeddings(objective, model_dir, corpus, tmp_path):
    """finetune: full updates the transformer's own weights (no adapter), leaves the (tied) input embeddings,
    lowers the loss, and saves exactly the model it trained."""
    stage = _stage(objective, corpus, finetune="full", lr=1e-3, mask_rate=0.3)
    recipe = Recipe(stages=[stage], model=str(model_dir), max_length=32)
    runner = StageRunner(recipe, stage, str(model_dir), tmp_path / "stage", tmp_path / "encoder", device="cpu")
    runner.run()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "stage" / "log.jsonl").read_text().splitlines()]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
    before, after = load_file(model_dir / "model.safetensors"), load_file(tmp_path / "encoder" / "model.safetensors")
    embed = next(k for k in after if "embed_tokens" in k)
    assert torch.equal(after[embed], before[f"model.{embed}"] if f"model.{embed}" in before else before[embed])
    changed = [k for k in after if "layers" in k and not torch.equal(after[k], before.get(f"model.{k}", before.get(k)))]
    assert len(changed) == sum("layers" in k for k in after)  # every layer weight moved
    assert not (tmp_path / "stage" / "adapter").exists() and after[embed].dtype == torch.float32
    saved = Encoder.from_pretrained(tmp_path / "encoder", device="cpu")
    assert np.allclose(saved.encode(SENTENCES[:3]), runner.encoder.encode(SENTENCES[:3]), atol=1e-5)


def test_half_written_checkpoint_is_skipped(model_dir, corpus, tmp_path):
    stage = _stage("mntp", corpus, max_steps=4, save_every=2, keep_checkpoints=5)
    _run(model_dir, stage, tmp_path)
    directory = tmp_path / "stage" / "checkpoints"
    good = directory / "step-0000002"
    assert ckpt.is_complete(good)
    broken = directory / "step-0000003"
    broken.mkdir()
    (broken / "adapter.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(directory) == good
    state = json.loads((good / "state.json").read_text())
    (good / "state.json").write_text(json.dumps({**state, "complete": False}))
    assert ckpt.latest_checkpoint(directory) is None
    with pytest.raises(ValueError, match="incomplete"):
        ckpt.load_checkpoint(good, None, None, None)


def test_merged_and_unmerged_adapter_give_the_same_vectors(model_dir, corpus, tmp_path):
    _run(model_dir, _stage("simcse", corpus, max_steps=3), tmp_path)
    merged = Encoder.from_pretrained(tmp_path / "encoder", device="cpu")
    unmerged = Encoder.from_pretrained(tmp_path / "stage" / "adapter", device="cpu")
    merged_on_load = Encoder.from_pretrained(tmp_path / "stage" / "adapter", device="cpu", merge_adapter=True)
    texts = ["a cat sat on the mat", "the dog", ("Retrieve:", "a bird on the hill")]
    reference = merged.encode(texts)
    assert np.abs(unmerged.encode(texts) - reference).max() < 1e-5
    assert np.abs(merged_on_load.encode(texts) - reference).max() < 1e-5
    base = Encoder.from_pretrained(model_dir, device="cpu")
    assert np.abs(base.encode(texts) - reference).max() > 1e-4  # training changed something


def test_multi_stage_recipe_chains_stages(model_dir, corpus, tmp_path):
    recipe = Recipe(model=str(model_dir), max_length=32, stages=[
        _stage("mntp", corpus, max_steps=2), _stage("simcse", corpus, max_steps=2)])
    final = train(recipe, tmp_path, device="cpu")
    config = json.loads((final / "lm2vec_config.json").read_text())
    assert list(config["training"]) == ["mntp", "simcse"] and config["max_length"] == 32
    adapter = json.loads((tmp_path / "stage2-simcse" / "adapter" / "lm2vec_config.json").read_text())
    assert adapter["base_model"] == str((tmp_path / "stage1-mntp" / "merged").resolve())
    assert (tmp_path / "recipe.yaml").is_file()


def test_schedule_warms_up_then_decays_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = linear_schedule(optimizer, warmup=2, total=6)
    rates = []
    for _ in range(6):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25])
    assert scheduler.get_last_lr()[0] == 0.0


def test_batches_split_across_processes_like_one_big_batch():
    stage = StageConfig(objective="simcse", data="x", batch_size=3, seed=1)
    single = StageConfig(objective="simcse", data="x", batch_size=6, seed=1)
    for step in range(4):
        both = batch_indices(10, step, 0, stage, 0, 2) + batch_indices(10, step, 0, stage, 1, 2)
        assert both == batch_indices(10, step, 0, single, 0, 1)


def test_recipe_validation(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - objective: mntp\n    data: x.txt\n    max_stepz: 3\n")
    with pytest.raises(RecipeError, match=r"stage .mntp.: unknown key .max_stepz.; did you mean .max_steps."):
        load_recipe(path)
    path.write_text("stages:\n  - objective: mntp\n    data: x.txt\n")
    recipe = load_recipe(path, ["mntp.max_steps=7", "model=/some/dir", "mntp.lora.r=4"])
    assert recipe.stages[0].max_steps == 7 and recipe.model == "/some/dir" and recipe.stages[0].lora.r == 4
    with pytest.raises(RecipeError, match="objective must be one of"):
        load_recipe(path, ["mntp.objective=mlm"])
    with pytest.raises(RecipeError, match="no single stage named 'simcse'"):
        load_recipe(path, ["stages.simcse.lr=1"])
    path.write_text("stages: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)


def test_contrastive_grad_accum_is_refused_and_points_to_gradcache():
    with pytest.raises(RecipeError, match="grad_accum does not enlarge the pool of in-batch negatives"):
        StageConfig(objective="simcse", data="x", batch_size=8, grad_accum=2)
    with pytest.raises(RecipeError, match="mini_batch_size needs a contrastive objective"):
        StageConfig(objective="mntp", data="x", mini_batch_size=2)
    with pytest.raises(RecipeError, match="mini_batch_size"):
        StageConfig(objective="simcse", data="x", batch_size=4, mini_batch_size=8)
    StageConfig(objective="mntp", data="x", grad_accum=4)  # MNTP has no in-batch negatives: accumulation is exact


def test_a_gradcache_stage_trains_exactly_like_the_full_batch_stage(model_dir, triplets, tmp_path):
    """Without dropout (attention or LoRA) the chunking is the only difference: the loss curves must agree."""
    stage = dict(max_steps=4, batch_size=8, attention_dropout=0.0, precision="fp32", lora={"dropout": 0.0})
    plain = _run(model_dir, _stage("supervised", triplets, **stage), tmp_path / "plain")
    cached = _run(model_dir, _stage("supervised", triplets, mini_batch_size=3, **stage), tmp_path / "cached")
    assert cached == pytest.approx(plain, abs=1e-5) and plain[-1] < plain[0]


def test_fp16_training_scales_the_loss(model_dir, corpus, tmp_path):
    stage = _stage("simcse", corpus, max_steps=2, precision="fp16")
    recipe = Recipe(stages=[stage], model=str(model_dir), max_length=32)
    runner = StageRunner(recipe, stage, str(model_dir), tmp_path / "stage", tmp_path / "encoder", device="cpu")
    runner.setup()
    assert runner.scaler.is_enabled()
    loss, _, _ = runner.train_step(0)
    assert runner.scaler.get_scale() > 1.0 and 0 < loss < 10  # scaled for backward, reported unscaled


def test_mntp_after_an_earlier_stage_keeps_an_untied_lm_head(tmp_path):
    """Stages save the backbone only; a model whose LM head is not tied to its embeddings must not start
    MNTP from a freshly initialised head."""
    from conftest import byte_tokenizer, tiny_config
    from transformers import AutoModelForCausalLM

    from lm2vec import EncoderConfig
    from lm2vec.training.loop import load_stage_encoder

    config = tiny_config("llama")
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config)
    base.save_pretrained(tmp_path / "base")
    byte_tokenizer().save_pretrained(tmp_path / "base")
    Encoder(base.model, byte_tokenizer(), EncoderConfig()).save_pretrained(tmp_path / "stage1")  # backbone only
    stage = StageConfig(objective="mntp", data="x")
    recipe = Recipe(stages=[stage], model=str(tmp_path / "base"))
    _, head = load_stage_encoder(str(tmp_path / "stage1"), stage, recipe, "cpu")
    assert torch.equal(head.weight, base.lm_head.weight)


def test_merge_false_is_refused_instead_of_ignored():
    with pytest.raises(RecipeError, match="merge: false is not supported"):
        StageConfig(objective="mntp", data="x", merge=False)
