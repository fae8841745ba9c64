"""LoRA for training: attach fresh adapters, merge them into the weights, list what trains.

LLM2Vec trains every stage with LoRA and merges the MNTP adapter into the weights before the next
stage adds a fresh one. peft is imported here and in core/adapters.py (loading saved adapters) only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.helpers import disable_input_dtype_casting
from torch import nn

from lm2vec.training.fast_dropout import use_fast_dropout
from lm2vec.training.recipe import LoraSettings

EXTRAS_PREFIX = "lm2vec_extras."  # checkpoint keys of the encoder's extra modules (core/extras.py)


def attach_lora(model: nn.Module, settings: LoraSettings) -> PeftModel:
    """Wrap `model` (a base decoder, no LM head) with fresh trainable LoRA adapters; all else frozen."""
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    use_fast_dropout(peft_model)  # same masks in distribution, a third of the CPU time
    return peft_model


def stack_frozen_adapters(model: PeftModel, adapter_dirs: Sequence[str | Path]) -> None:
    """Run earlier stages' saved adapters unmerged and frozen beside the trainable one.

    Merged float32 weights stored again in bf16 round away much of a small LoRA delta: bf16(W + BA)
    is not bf16(W) + BA, which is what the earlier stage trained (STS Benchmark dev fell from 40.3 at
    MNTP's last step to 38.9 at SimCSE's first, 2026-12-02). Stacked on the same bf16 base, the earlier
    deltas stay exact in float32, so the stage starts from exactly the function the last one ended with.
    Their dropout is off (a merged delta has none); only the `default` adapter trains and is saved.
    """
    names = [model.active_adapter]
    for index, directory in enumerate(adapter_dirs):
        name = f"earlier{index}"
        model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
        names.append(name)
    if len(names) == 1:
        return
    model.base_model.set_adapter(names)
    for module in model.modules():
        for name in names[1:]:
            if isinstance(getattr(module, "lora_dropout", None), nn.ModuleDict) and name in module.lora_dropout:
                module.lora_dropout[name] = nn.Identity()
    for name, param in model.named_parameters():
        param.requires_grad = f".{names[0]}." in name


def lora_inputs_uncast(model: nn.Module):
    """Context in which peft no longer casts each adapter's input to the adapter's (float32) dtype.

    Under bf16 autocast the cast is waste: autocast runs the adapter's matmuls in bf16 anyway (casting
    the small float32 weights, not the large activations), so peft's cast only copies every activation
    to float32 and back. Outside autocast the cast is needed; so use this only together with it.
    """
    if not isinstance(model, PeftModel):
        return contextlib.nullcontext()
    return disable_input_dtype_casting(model)


def merge_lora(peft_model: PeftModel) -> nn.Module:
    """Fold the adapter into the base weights and return the plain model."""
    return peft_model.merge_and_unload()


def trainable_parameters(model: nn.Module) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def prepare_full_finetune(model: nn.Module) -> nn.Module:
    """Every weight trains except the input embeddings: most small decoders tie them to the LM head, which
    MNTP reads as a fixed target, and their rows for rare tokens would only drift on a small corpus."""
    model.requires_grad_(True)
    model.get_input_embeddings().requires_grad_(False)
    return model


def trainable_state(model: nn.Module, extras: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The weights a checkpoint keeps: the trainable adapter's, or every trained weight of a plain model;
    plus the trained weights of the encoder's extra modules (`Encoder.extras`), under EXTRAS_PREFIX."""
    if isinstance(model, PeftModel):
        state = get_peft_model_state_dict(model)
    else:
        state = _trained(model)
    return {**state, **{EXTRAS_PREFIX + name: p for name, p in _trained(extras).items()}}


def load_trainable_state(model: nn.Module, tensors: dict[str, torch.Tensor], extras: nn.Module | None = None) -> None:
    """Put back what `trainable_state` returned."""
    own = {k.removeprefix(EXTRAS_PREFIX): v for k, v in tensors.items() if k.startswith(EXTRAS_PREFIX)}
    tensors = {k: v for k, v in tensors.items() if not k.startswith(EXTRAS_PREFIX)}
    if set(own) != set(_trained(extras)):
        raise ValueError(f"checkpoint holds {len(own)} weights of extra modules where this encoder trains "
                         f"{len(_trained(extras))}: it was saved with other encoder settings")
    if own:
        extras.load_state_dict(own, strict=False)
    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, tensors)
        return
    unexpected = model.load_state_dict(tensors, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"checkpoint holds weights this model does not have: {unexpected[:3]}")


def _trained(module: nn.Module | None) -> dict[str, torch.Tensor]:
    return {} if module is None else {name: p for name, p in module.named_parameters() if p.requires_grad}
