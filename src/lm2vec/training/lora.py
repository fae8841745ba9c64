"""LoRA for training: attach fresh adapters, merge them into the weights, list what trains.

LLM2Vec trains every stage with LoRA and merges the MNTP adapter into the weights before the next
stage adds a fresh one. peft is imported here and in core/adapters.py (loading saved adapters) only.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from lm2vec.training.recipe import LoraSettings


def attach_lora(model: nn.Module, settings: LoraSettings) -> PeftModel:
    """Wrap `model` (a base decoder, no LM head) with fresh trainable LoRA adapters; all else frozen."""
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias="none",
    )
    return get_peft_model(model, config)


def merge_lora(peft_model: PeftModel) -> nn.Module:
    """Fold the adapter into the base weights and return the plain model."""
    return peft_model.merge_and_unload()


def trainable_parameters(model: nn.Module) -> list:
    return [p for p in model.parameters() if p.requires_grad]
