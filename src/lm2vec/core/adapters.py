"""Loading saved LoRA adapters onto a base model (attaching and merging new ones is training/lora.py).

An adapter directory holds `adapter_model.safetensors`, `adapter_config.json` and
`lm2vec_config.json`, whose `base_model` names the weights it sits on.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_adapter(model: nn.Module, adapter_dir: str | Path, merge: bool = False) -> nn.Module:
    """Put a saved adapter on `model`; merged if asked (same vectors, faster inference)."""
    wrapped = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    return wrapped.merge_and_unload() if merge else wrapped
