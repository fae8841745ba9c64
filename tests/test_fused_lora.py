"""Fused LoRA layers (training/fused_lora.py): peft's function and gradients, with the same dropout masks."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import tiny_model
from peft import LoraConfig, get_peft_model
from torch import nn

from lm2vec.training import fused_lora
from lm2vec.training.fast_dropout import FastDropout
from lm2vec.training.fused_lora import FusedLoraFunction, fuse_lora_layers, zero_dropped
from lm2vec.training.lora import attach_lora, lora_inputs_uncast
from lm2vec.training.recipe import LoraSettings


def _lora_model(dropout: float, base_dtype: torch.dtype = torch.float32, seed: int = 0):
    """Tiny llama with LoRA whose B is random (peft starts it at 0, which would hide A's gradient)."""
    model = attach_lora(tiny_model("llama", seed=seed).to(base_dtype), LoraSettings(dropout=dropout))
    torch.manual_seed(seed + 1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.2)
    return model.train()


def _step(model, ids, precision: str, seed: int = 3):
    """Loss, d loss / d (every trainable weight) and the input embeddings' gradient, as in a training step."""
    model.zero_grad(set_to_none=True)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    bf16 = precision == "bf16"
    with (lora_inputs_uncast(model) if bf16 else contextlib.nullcontext(),
          torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)):
        torch.manual_seed(seed)  # the same dropout draws on both sides
        hidden = model(inputs_embeds=embeds).last_hidden_state
        weights = torch.linspace(-1, 1, hidden.numel()).view(hidden.shape)  # not a norm: the last RMSNorm
        loss = (hidden.float() * weights).sum() / hidden.shape[0]  # would flatten that to ~0 gradients
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, embeds.grad.clone()


def _gap(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_layers_give_peft_loss_and_gradients_with_the_same_masks(dropout):
    ids = torch.randint(3, 200, (3, 12))
    plain, fused = _lora_model(dropout), _lora_model(dropout)
    assert fuse_lora_layers(fused) == 14  # 2 layers x 7 projections
    expected, got = _step(plain, ids, "fp32"), _step(fused, ids, "fp32")
    assert got[0] == pytest.approx(expected[0], rel=1e-5)
    for name, grad in expected[1].items():
        assert grad.norm() > 0 and _gap(got[1][name], grad) < 1e-5, name
    assert _gap(got[2], expected[2]) < 1e-5
    if dropout:  # a different draw gives a different loss: the masks matter, and both sides drew the same
        assert _step(fused, ids, "fp32", seed=4)[0] != pytest.approx(got[0], rel=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_bf16_training_is_as_close_to_float32_as_peft_bf16(dropout):
    """bf16 base under autocast, as `precision: bf16` trains: both paths round, in a different order, so
    each is compared with the float32 computation on the same weights and masks; the fused one may not
    stray further (it rounds the adapter's sum once, inside addmm, where peft rounds it twice)."""
    ids = torch.randint(3, 200, (3, 12))
    reference = _step(_lora_model(dropout), ids, "fp32")
    plain, fused = _lora_model(dropout, torch.bfloat16), _lora_model(dropout, torch.bfloat16)
    fuse_lora_layers(fused)
    runs = {"peft": _step(plain, ids, "bf16"), "fused": _step(fused, ids, "bf16")}
    error = {side: [abs(run[0] - reference[0])] + [_gap(run[1][n], g) for n, g in reference[1].items()]
             for side, run in runs.items()}
    assert max(error["fused"][1:]) < 0.1  # bf16 keeps every weight's gradient direction
    assert sum(error["fused"]) <= 1.5 * sum(error["peft"]), error


def test_frozen_stacked_adapter_is_summed_in_and_only_the_trainable_one_gets_gradients():
    ids = torch.randint(3, 200, (2, 10))
    models = []
    for _ in range(2):
        model = _lora_model(0.1)
        model.add_adapter("earlier0", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
        model.base_model.set_adapter(["default", "earlier0"])
        for name, param in model.named_parameters():
            if "earlier0" in name:
                nn.init.normal_(param, std=0.2)
            param.requires_grad = ".default." in name
        for module in model.modules():
            if isinstance(getattr(module, "lora_dropout", None), nn.ModuleDict) and "earlier0" in module.lora_dropout:
                module.lora_dropout["earlier0"] = nn.Identity()
        models.append(model)
    fuse_lora_layers(models[1])
    calls = []
    original = FusedLoraFunction.forward
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FusedLoraFunction, "forward", staticmethod(lambda ctx, *a: calls.append(len(a[-1])) or original(ctx, *a)))
        expected, got = _step(models[0], ids, "fp32"), _step(models[1], ids, "fp32")
    assert calls.count(1) == 4 and calls.count(0) == 10  # q_proj and down_proj of 2 layers carry the frozen one
    assert got[0] == pytest.approx(expected[0], rel=1e-5)
    assert set(got[1]) == set(expected[1]) and all(".default." in name for name in got[1])
    for name, grad in expected[1].items():
        assert _gap(got[1][name], grad) < 1e-5, name
    assert _gap(got[2], expected[2]) < 1e-5


def test_eval_mode_draws_no_mask_and_gives_peft_output():
    ids = torch.randint(3, 200, (2, 9))
    plain, fused = _lora_model(0.3).eval(), _lora_model(0.3).eval()
    fuse_lora_layers(fused)
    state = torch.random.get_rng_state()
    with torch.no_grad():
        out = fused(input_ids=ids).last_hidden_state
    assert torch.equal(torch.random.get_rng_state(), state)
    with torch.no_grad():
        assert torch.allclose(out, plain(input_ids=ids).last_hidden_state, atol=1e-5)


def _layer(model) -> nn.Module:
    return model.base_model.model.layers[0].self_attn.q_proj


def test_what_the_fused_path_leaves_to_peft():
    model = _lora_model(0.1)
    layer, x = _layer(model), torch.randn(2, 5, 64)
    assert fused_lora._plan(layer, x, {}) == ("default", [], pytest.approx(65536 / (65536 - 6554)))  # FastDropout(0.1)
    assert fused_lora._plan(layer, x, {"adapter_names": ["default"] * 2}) is None
    assert fused_lora._plan(layer, x.bfloat16(), {}) is None  # base float32, input bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_lora._plan(layer, x, {}) is None  # autocast to another dtype than x's
    bf16 = _layer(_lora_model(0.1, torch.bfloat16))
    assert fused_lora._plan(bf16, x.bfloat16(), {}) is None  # float32 adapters without autocast: peft casts up
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_lora._plan(bf16, x.bfloat16(), {})[:2] == ("default", [])
    layer.lora_dropout["default"] = nn.Dropout(0.1)  # not FastDropout: its mask cannot be drawn here
    assert fused_lora._plan(layer, x, {}) is None
    layer.lora_dropout["default"] = FastDropout(0.1)
    layer.merge()
    assert fused_lora._plan(layer, x, {}) is None
    layer.unmerge()
    with model.disable_adapter():
        assert fused_lora._plan(layer, x, {}) is None
    dora = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert fused_lora._plan(_layer(dora), x, {}) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_zero_dropped_is_masked_fill(dtype):
    values, keep = torch.randn(7, 33).to(dtype), torch.rand(7, 33) > 0.4
    expected = values.masked_fill(~keep, 0)
    assert torch.equal(zero_dropped(values, keep), expected)
    assert torch.equal(zero_dropped(values.clone(), keep, in_place=True), expected)


@pytest.mark.parametrize("gradcache", [False, True])
def test_cpu_training_runs_fused_and_follows_peft_loss_curve(gradcache, model_dir, tmp_path, monkeypatch):
    """The real loop (SimCSE: LoRA dropout and attention dropout draw from one RNG stream) fuses every
    LoRA layer on a CPU and gives the loss curve peft's own forward gives, step for step; with GradCache
    too, whose gradient pass replays the masks its first, gradient-free pass drew."""
    from lm2vec.training import loop
    from lm2vec.training.loop import StageRunner
    from lm2vec.training.recipe import Recipe, StageConfig

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"sentence {i} about {'many ' * (i % 4)}things\n" for i in range(24)))
    curves = {}
    for side in ("fused", "peft"):
        if side == "peft":
            monkeypatch.setattr(loop, "fuse_lora_layers", lambda model: 0)
        stage = StageConfig(objective="simcse", data=str(corpus), max_steps=3, batch_size=4, max_length=32, lr=1e-2,
                            warmup_steps=0, save_every=100, attention_dropout=0.1, lora={"dropout": 0.1},
                            mini_batch_size=2 if gradcache else None,
                            precision="fp32")  # "auto" is bf16 on CPUs with bf16 units: not bit-comparable
        runner = StageRunner(Recipe(stages=[stage], model=str(model_dir), max_length=32), stage, str(model_dir),
                             tmp_path / side / "s", tmp_path / side / "e", device="cpu")
        runner.setup()
        fused = sum("forward" in vars(m) for m in runner.peft.modules())
        assert fused == (14 if side == "fused" else 0)
        curves[side] = [runner.train_step(step)[0] for step in range(3)]
    assert curves["fused"] == pytest.approx(curves["peft"], rel=1e-5), curves
