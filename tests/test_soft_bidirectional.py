"""Soft causal-to-bidirectional attention: weight 0 is the causal model, 1 the bidirectional one, and a
training stage with `bidirectional_anneal_steps` walks from one to the other."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_model
from transformers.masking_utils import bidirectional_mask_function

from lm2vec import Encoder
from lm2vec.core.bidirectional import BidirectionalError, is_bidirectional, make_bidirectional
from lm2vec.core.soft_bidirectional import FUTURE_WEIGHT, annealed_weight, set_future_weight, soft_sdpa_mask
from lm2vec.training.loop import StageRunner
from lm2vec.training.recipe import Recipe, RecipeError, StageConfig

IDS = torch.tensor([[5, 17, 42, 99, 7, 63, 28, 11, 80], [0, 0, 0, 31, 8, 77, 54, 19, 66]])
MASK = (IDS != 0).long()  # row 1 is left-padded


def _states(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).last_hidden_state[MASK.bool()]


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_weight_zero_is_causal_one_is_bidirectional_and_between_is_neither(model_type):
    causal = _states(tiny_model(model_type))
    bidirectional = _states(make_bidirectional(tiny_model(model_type)))
    model = tiny_model(model_type)
    set_future_weight(model, 0.0)
    assert torch.allclose(_states(model), causal, atol=1e-5)
    set_future_weight(model, 0.5)
    halfway = _states(model)
    assert (halfway - causal).abs().max() > 1e-3 and (halfway - bidirectional).abs().max() > 1e-3
    set_future_weight(model, 1.0)
    assert torch.allclose(_states(model), bidirectional, atol=1e-5)
    assert model.config._attn_implementation == "sdpa" and not hasattr(model.config, FUTURE_WEIGHT)


def test_mask_adds_log_weight_on_future_keys_only():
    config = type("Config", (), {FUTURE_WEIGHT: 0.25})()
    mask = soft_sdpa_mask(2, 4, 4, mask_function=bidirectional_mask_function,
                          attention_mask=torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]]), config=config)
    lowest = torch.finfo(torch.float32).min
    expected = torch.tensor([[0.0, math.log(0.25), math.log(0.25), math.log(0.25)],
                             [0.0, 0.0, math.log(0.25), math.log(0.25)],
                             [0.0, 0.0, 0.0, math.log(0.25)],
                             [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(mask[0, 0], expected)
    assert (mask[1, 0, :, 0] == lowest).all() and torch.allclose(mask[1, 0, :, 1:], expected[:, 1:])


def test_only_sdpa_models_and_weights_in_zero_one():
    with pytest.raises(BidirectionalError, match="sdpa"):
        set_future_weight(tiny_model("llama", attn="eager"), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_future_weight(tiny_model("llama"), 1.5)
    assert [annealed_weight(s, 4) for s in (0, 1, 4, 9)] == [0.0, 0.25, 1.0, 1.0] and annealed_weight(0, 0) == 1.0


def test_a_stage_anneals_from_causal_at_step_0_to_bidirectional_at_step_n(model_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"sentence {i} about the {w} near the river\n" for i, w in enumerate(["cat", "dog"] * 8)))
    stage = StageConfig(objective="simcse", data=str(corpus), max_steps=6, batch_size=4, max_length=24, lr=1e-3,
                        warmup_steps=0, save_every=100, bidirectional_anneal_steps=4)
    runner = StageRunner(Recipe(stages=[stage], model=str(model_dir), max_length=24), stage, str(model_dir),
                         tmp_path / "stage", tmp_path / "encoder", device="cpu")
    runner.setup()
    seen = []
    for step in range(6):
        runner.anneal_attention(step)
        seen.append((getattr(runner.encoder.model.config, FUTURE_WEIGHT, 1.0), is_bidirectional(runner.encoder.model)))
    assert seen == [(0.0, False), (0.25, True), (0.5, True), (0.75, True), (1.0, True), (1.0, True)]
    runner.run()
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "stage" / "log.jsonl").read_text().splitlines())]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    saved = json.loads((tmp_path / "encoder" / "config.json").read_text())
    assert saved.get("is_causal") is False and FUTURE_WEIGHT not in saved
    assert is_bidirectional(Encoder.from_pretrained(tmp_path / "encoder", device="cpu").model)


def test_recipes_refuse_an_anneal_that_cannot_finish_or_has_no_bidirectional_end():
    with pytest.raises(RecipeError, match="bidirectional_anneal_steps must be in"):
        StageConfig(objective="simcse", data="x", max_steps=10, bidirectional_anneal_steps=11)
    with pytest.raises(RecipeError, match="needs bidirectional: true"):
        Recipe(stages=[StageConfig(objective="simcse", data="x", max_steps=10, bidirectional_anneal_steps=5)],
               bidirectional=False)
