"""How weights are loaded: the user's `model_kwargs` for `from_pretrained`, the default device and dtype
(or inference compute mode, core/compute.py), and 8-bit / 4-bit bases.

As with sentence-transformers' `model_kwargs`, whatever `from_pretrained` accepts passes through
unchanged (attn_implementation, revision, token, device_map, dtype, ...), so lm2vec never has to learn
each new loader option. The keys that say *where the files come from* (revision, token, ...) also go
to the tokenizer and to every later reload of the same weights (an adapter's base, an LM head, the
float32 copy an adapter is merged into), so a private or pinned model loads the same way each time.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from typing import Any

import torch

from lm2vec.core.compute import resolve_dtype

# from_pretrained keys that pick the files, not how the model is built: tokenizers and reloads need them too
SOURCE_KEYS = ("revision", "token", "trust_remote_code", "cache_dir", "local_files_only", "subfolder")
QUANTIZATIONS = ("8bit", "4bit")
REDACTED = "<redacted>"


class MissingPackageError(ImportError):
    """An optional feature whose package is not installed; the message says what to install."""


def check_model_kwargs(value: Any, where: str = "model_kwargs") -> dict[str, Any]:
    """A copy of `value` as keyword arguments for `from_pretrained`: it must be a mapping with string keys."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping of from_pretrained arguments (e.g. "
                         f'{{"attn_implementation": "eager"}}), got {type(value).__name__}')
    bad = [key for key in value if not isinstance(key, str) or not key.isidentifier()]
    if bad:
        raise ValueError(f"{where}: keys must be argument names, got {bad[:3]}")
    return dict(value)


def parse_model_kwargs(text: str | None, where: str = "--model-kwargs") -> dict[str, Any]:
    """`--model-kwargs '{"attn_implementation": "eager"}'`: a JSON object, checked as above."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} must be a JSON object such as '{{\"revision\": \"main\"}}': {error}") from None
    return check_model_kwargs(value, where)


def source_kwargs(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keys that choose the files (for tokenizers and reloads of the same weights)."""
    return {key: value for key, value in model_kwargs.items() if key in SOURCE_KEYS}


def hub_kwargs(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keys `resolve_model_path` needs to check a hub id (a pinned revision, a private repo's token)."""
    return {key: model_kwargs[key] for key in ("revision", "token") if model_kwargs.get(key) is not None}


def pop_dtype(load_kwargs: dict[str, Any], given: Any = None) -> Any:
    """Remove `dtype` (or the older `torch_dtype`) from `load_kwargs`; `given` wins when it is not None."""
    found = [load_kwargs.pop(key, None) for key in ("dtype", "torch_dtype")]
    return given if given is not None else next((d for d in found if d is not None), None)


def default_device() -> str:
    """The first accelerator if any, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bfloat16 on CUDA (fast and safe for inference), float32 on CPU: bf16 pays there only on CPUs with
    AVX512-BF16/AMX, and it moves some vectors (min cosine 0.91 measured; `dtype="bf16-matmul"` is the
    fast CPU mode that stays close to float32, see core/compute.py and docs/performance.md)."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def load_dtype(load_kwargs: dict[str, Any], dtype: Any, device: str) -> str | None:
    """Set `load_kwargs["dtype"]` from `dtype`, else from the dtype (or torch_dtype) already in `load_kwargs`,
    else `default_dtype(device)`; return the inference compute mode it names (core/compute.py: its weights
    load in float32), or None. A compute mode converts float32 nn.Linear layers, so a bitsandbytes-quantized
    load is refused before anything loads."""
    load_kwargs["dtype"], mode = resolve_dtype(pop_dtype(load_kwargs, dtype), default_dtype(device))
    if mode and load_kwargs.get("quantization_config") is not None:
        raise ValueError(f"dtype {mode!r} converts float32 weights for inference; it cannot be combined with "
                         "quantization_config (the weights are quantized already): drop one of the two")
    return mode


def places_itself(load_kwargs: Mapping[str, Any]) -> bool:
    """True when from_pretrained puts the weights on devices itself (device_map, bitsandbytes); moving
    such a model with `.to(device)` afterwards is wrong (split models) or refused (quantized ones)."""
    return load_kwargs.get("device_map") is not None or load_kwargs.get("quantization_config") is not None


def redacted(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """model_kwargs as they may be written to disk (run recipes, logs): never the hub token."""
    return {key: (REDACTED if key == "token" and value not in (None, False) else value)
            for key, value in model_kwargs.items()}


def quantization_kwargs(mode: str | None, compute_dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """from_pretrained kwargs that load the frozen base in 8 or 4 bits with bitsandbytes (QLoRA: NF4
    weights, double quantisation, matmuls in `compute_dtype`); LoRA weights on top stay float32."""
    if mode is None:
        return {}
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS} or null, got {mode!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingPackageError(f"quantization: {mode} loads the base model with the bitsandbytes package, "
                                  "which is not installed: pip install bitsandbytes (or 'lm2vec[quantization]'); "
                                  "bitsandbytes needs a CUDA GPU")
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True,
                                                      bnb_4bit_compute_dtype=compute_dtype)}
