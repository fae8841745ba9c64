"""The config.json flags that serving engines read for bidirectional attention, one row per architecture.

transformers (and sentence-transformers on top of it) reads `is_causal: false`, which every bidirectional
export already carries. Engines that reimplement an architecture read their own key instead:
text-embeddings-inference reads `is_causal` for Qwen2 but `use_bidirectional_attention` for Qwen3,
Llama, Mistral and Gemma 3; vLLM reads `is_causal` for Qwen2 and Qwen3. Without the engine's key the
engine runs the model causally and its vectors are not lm2vec's. This table comes from the engines'
source and documentation; neither engine was run here (no GPU, no Docker). See docs/serving.md.

The flags are set on a copy of the model's config and written as transformers serialises that copy, so
an architecture whose config reacts to a flag keeps transformers' own convention: Gemma 3 then stores
its sliding window doubled (transformers halves it on load), and a plain `from_pretrained` still
attends exactly as lm2vec did.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from lm2vec.export.common import update_json

ENGINE_FLAGS: dict[str, dict[str, object]] = {
    "qwen2": {"is_causal": False},  # text-embeddings-inference (FlashQwen2), vLLM
    "qwen3": {"is_causal": False, "use_bidirectional_attention": True},  # vLLM / text-embeddings-inference
    "llama": {"use_bidirectional_attention": True},  # text-embeddings-inference (FlashLlama via FlashMistral)
    "mistral": {"use_bidirectional_attention": True},  # text-embeddings-inference (FlashMistral)
    "gemma3_text": {"use_bidirectional_attention": True},  # text-embeddings-inference (Gemma3)
}


def _text_config(config):
    """The decoder's config (a multimodal wrapper keeps it under text_config)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def engine_flag_changes(model: nn.Module) -> dict[str, object]:
    """The config.json keys (top level) that change when the engine flags of the model's architecture are set.

    Empty for architectures without a row and for a causal model: flags are only ever written to say
    'bidirectional', never to change how a causal model attends."""
    config = model.config
    flags = ENGINE_FLAGS.get(_text_config(config).model_type, {})
    if not flags or getattr(_text_config(config), "is_causal", True) is not False:
        return {}
    flagged = copy.deepcopy(config)
    for key, value in flags.items():
        setattr(_text_config(flagged), key, value)
    before, after = config.to_dict(), flagged.to_dict()
    return {key: value for key, value in after.items() if before.get(key) != value}


def write_engine_flags(folder: Path, model: nn.Module) -> dict[str, object]:
    """Add the engine flags to folder/config.json (as saved from `model`); returns the keys written."""
    changes = engine_flag_changes(model)
    if changes:
        update_json(Path(folder) / "config.json", changes)
    return changes
