"""FastDropout: nn.Dropout's masks in distribution, replayable by seed, and what LoRA uses when training."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from torch import nn

from lm2vec.training.fast_dropout import FastDropout
from lm2vec.training.lora import attach_lora
from lm2vec.training.recipe import LoraSettings


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_drop_rate_and_scale_match_dropout(p):
    x = torch.ones(1000, 1000)
    y = FastDropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.003  # 1e6 Bernoulli draws: the standard error is below 0.0005
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-3)
    assert abs(y.mean().item() - 1.0) < 0.005  # unbiased, as nn.Dropout


def test_masks_differ_between_calls_and_replay_under_the_same_seed():
    """GradCache replays each chunk's forward under its seed: the masks must come back identical."""
    x, dropout = torch.randn(64, 48), FastDropout(0.3).train()
    torch.manual_seed(7)
    first, second = dropout(x), dropout(x)
    torch.manual_seed(7)
    assert torch.equal(dropout(x), first) and not torch.equal(first, second)


def test_gradient_is_the_mask_times_the_scale_and_eval_is_identity():
    x = torch.randn(32, 16, requires_grad=True)
    dropout = FastDropout(0.5).train()
    y = dropout(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 2.0)
    assert dropout.eval()(x) is x and FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FastDropout(1.0)


def test_lora_training_uses_fast_dropout_on_adapter_inputs():
    model = attach_lora(tiny_model("llama"), LoraSettings(dropout=0.05))
    dropouts = [m for name, module in model.named_modules() if name.endswith("lora_dropout") for m in module.values()]
    assert dropouts and all(isinstance(m, FastDropout) and m.p == 0.05 for m in dropouts)
    assert not any(type(m) is nn.Dropout for name, module in model.named_modules()
                   if name.endswith("lora_dropout") for m in module.values())
