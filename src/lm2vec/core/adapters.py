"""LoRA adapters: attach, merge, save and load. The only module that imports peft.

LLM2Vec trains every stage with LoRA and merges the MNTP adapter into the weights before the next
stage adds a fresh one. An adapter directory saved here holds `adapter_model.safetensors`,
`adapter_config.json` and `lm2vec_config.json`, whose `base_model` names the weights it sits on.
"""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from lm2vec.training.recipe import LoraSettings

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


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


def load_adapter(model: nn.Module, adapter_dir: str | Path, merge: bool = False) -> nn.Module:
    """Put a saved adapter on `model`; merged if asked (same vectors, faster inference)."""
    wrapped = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    return wrapped.merge_and_unload() if merge else wrapped


def trainable_parameters(model: nn.Module) -> list:
    return [p for p in model.parameters() if p.requires_grad]
