"""Matryoshka loss: hand-computed values on fixed tensors, the plain loss at full width, the wiring through
both contrastive objectives, and the recipe's checks of `matryoshka_dims` / `matryoshka_weights`."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from conftest import tiny_encoder

from lm2vec.data.triplets import Triplet
from lm2vec.training.objectives import SimCSETask, SupervisedTask
from lm2vec.training.objectives.contrastive import info_nce
from lm2vec.training.objectives.matryoshka import matryoshka_loss
from lm2vec.training.recipe import RecipeError, StageConfig, load_recipe

R = 1 / math.sqrt(2)
Q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
P = torch.tensor([[3.0, 0.0, 4.0], [2.0, 2.0, 0.0]])  # full cosines: q1.p1 = 3/5, q1.p2 = q2.p2 = R, q2.p1 = 0
N = torch.tensor([[[-1.0, 0.0, 0.0]], [[0.0, -2.0, 0.0]]])  # (B, K=1, D): q1.n1 = q2.n2 = -1, others 0


def _nll(scores, target):
    return -scores[target] + math.log(sum(math.exp(s) for s in scores))


def _info_nce(e):
    return info_nce(e["q"], e["p"], e.get("n"), scale=2.0)


def test_loss_is_the_weighted_sum_of_hand_computed_info_nce_per_prefix():
    full = (_nll([2 * 0.6, 2 * R], 0) + _nll([0, 2 * R], 1)) / 2
    two = (_nll([2, 2 * R], 0) + _nll([0, 2 * R], 1)) / 2  # p1 -> (3, 0): q1.p1 = 1
    one = (_nll([2, 2], 0) + _nll([0, 0], 1)) / 2  # q2 -> (0): a zero vector, cosine 0 with everything
    loss = matryoshka_loss(_info_nce, {"q": Q, "p": P}, [3, 2, 1], [1.0, 0.5, 0.25])
    assert loss.item() == pytest.approx(full + 0.5 * two + 0.25 * one, abs=1e-6)


def test_hard_negatives_are_truncated_too_and_weights_default_to_one():
    full = (_nll([2 * 0.6, 2 * R, -2, 0], 0) + _nll([0, 2 * R, 0, -2], 1)) / 2
    one = (_nll([2, 2, -2, 0], 0) + _nll([0, 0, 0, 0], 1)) / 2
    loss = matryoshka_loss(_info_nce, {"q": Q, "p": P, "n": N}, [3, 1])
    assert loss.item() == pytest.approx(full + one, abs=1e-6)


def test_gradients_reach_only_the_trained_prefixes():
    q = Q.clone().requires_grad_()
    matryoshka_loss(_info_nce, {"q": q, "p": P}, [2]).backward()
    assert q.grad[:, 2].abs().max() == 0 and q.grad[:, :2].abs().max() > 0


# ---------------------------------------------------------------- the objectives


def _simcse(**stage):
    encoder = tiny_encoder()
    return SimCSETask(StageConfig(objective="simcse", data="x", **stage), encoder)


def _supervised(**stage):
    triplets = [Triplet("q one", "p one", ["n1", "n2"]), Triplet("q two", "p two", []),
                Triplet("q one", "p3", ["n3"])]  # rows 0 and 2 share a query: the duplicate mask matters
    task = SupervisedTask(StageConfig(objective="supervised", data="x", **stage), tiny_encoder())
    return task, task.collate(triplets, torch.Generator())


def _embeddings(task, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(side["input_ids"].shape[0], 64, generator=g) for name, side in task.embedding_sides(batch)}


def test_full_width_alone_is_the_plain_loss():
    task, batch = _supervised()
    nested, _ = _supervised(matryoshka_dims=[64])
    e = _embeddings(task, batch)
    assert nested.loss_from_embeddings(e, batch).item() == task.loss_from_embeddings(e, batch).item()
    views = {"view1": e["query"], "view2": e["positive"]}
    assert _simcse(matryoshka_dims=[64]).loss_from_embeddings(views).item() == _simcse().loss_from_embeddings(views).item()


@pytest.mark.parametrize("objective", ["simcse", "supervised"])
def test_objectives_sum_their_own_loss_over_the_prefixes(objective):
    if objective == "simcse":
        plain, nested, batch = _simcse(), _simcse(matryoshka_dims=[64, 16], matryoshka_weights=[1.0, 0.5]), None
        e = {"view1": torch.randn(4, 64), "view2": torch.randn(4, 64)}
    else:
        plain, batch = _supervised()
        nested, _ = _supervised(matryoshka_dims=[64, 16], matryoshka_weights=[1.0, 0.5])
        e = _embeddings(plain, batch)
    cut = {name: v[:, :16] for name, v in e.items()}
    expected = plain.loss_from_embeddings(e, batch) + 0.5 * plain.loss_from_embeddings(cut, batch)
    torch.testing.assert_close(nested.loss_from_embeddings(e, batch), expected)


def test_dims_above_the_models_width_fail_when_the_model_is_known(caplog):
    with pytest.raises(RecipeError, match=r"matryoshka_dims \[128\] exceed the model's embedding dimension 64"):
        _simcse(matryoshka_dims=[128, 32])
    with caplog.at_level(logging.WARNING):
        _simcse(matryoshka_dims=[32, 16])
    assert "leave out the full dimension 64" in caplog.text


# ---------------------------------------------------------------- recipe checks


@pytest.mark.parametrize(("settings", "message"), [
    ({"matryoshka_dims": []}, "matryoshka_dims must be a non-empty list of dimensions >= 1"),
    ({"matryoshka_dims": [64, 0]}, "matryoshka_dims must be a non-empty list of dimensions >= 1"),
    ({"matryoshka_dims": [64, 32, 64]}, "matryoshka_dims repeats a dimension"),
    ({"matryoshka_dims": [64, 32], "matryoshka_weights": [1.0]}, "one weight > 0 per dimension"),
    ({"matryoshka_dims": [64, 32], "matryoshka_weights": [1.0, -1.0]}, "one weight > 0 per dimension"),
    ({"matryoshka_weights": [1.0]}, "matryoshka_weights needs matryoshka_dims"),
    ({"objective": "mntp", "matryoshka_dims": [64]}, "needs a contrastive objective"),
])
def test_bad_matryoshka_settings_fail_validation(settings, message):
    with pytest.raises(RecipeError, match=message):
        StageConfig(**{"objective": "simcse", "data": "x", **settings})


def test_recipe_files_are_type_checked_and_take_dims_from_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - objective: simcse\n    data: x.txt\n    matryoshka_dims: [64, a]\n")
    with pytest.raises(RecipeError, match="stage 'simcse': matryoshka_dims must be a list of integers or null"):
        load_recipe(path)
    path.write_text("stages:\n  - objective: simcse\n    data: x.txt\n")
    stage = load_recipe(path, ["simcse.matryoshka_dims=[64,32,16]", "simcse.matryoshka_weights=[1,1,0.5]"]).stages[0]
    assert stage.matryoshka_dims == [64, 32, 16] and stage.matryoshka_weights == [1, 1, 0.5]
