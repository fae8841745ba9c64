"""Trainable modules beside the backbone, switched on in EncoderConfig: latent-attention pooling
(core/latent_attention.py) and the contextual token (core/contextual.py).

They live in `Encoder.extras`, one nn.ModuleDict, so every consumer finds them in one place: the
training loop puts their trainable parameters in the optimiser beside LoRA's, checkpoints and restores
them; `save_pretrained` writes them to lm2vec_extras.safetensors (and the contextual token's frozen
pre-encoder to contextual_encoder/, a model folder of its own); loading reads them back. Fresh modules
start from the same weights in every run and process (seeded), whatever the global random state.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lm2vec.core.contextual import ContextualToken
from lm2vec.core.latent_attention import LatentAttention

logger = logging.getLogger(__name__)
EXTRAS_FILE = "lm2vec_extras.safetensors"
CONTEXT_DIR = "contextual_encoder"
CONTEXTUAL_OUTPUTS = ("concat", "context", "text")
FROZEN = "contextual.encoder."  # the pre-encoder's weights: saved as a model folder, never trained


def check_extras_settings(config) -> None:
    """Raise a ValueError for settings the modules cannot be built with."""
    if config.contextual_output not in CONTEXTUAL_OUTPUTS:
        raise ValueError(f"contextual_output must be one of {', '.join(CONTEXTUAL_OUTPUTS)}, got {config.contextual_output!r}")
    if config.latent_attention_latents < 1 or config.latent_attention_heads < 1:
        raise ValueError("latent_attention_latents and latent_attention_heads must be >= 1, got "
                         f"{config.latent_attention_latents} and {config.latent_attention_heads}")


def output_dim(config, hidden: int) -> int:
    """Width of the encoder's vectors: twice the hidden size when the contextual state is concatenated."""
    return 2 * hidden if config.contextual and config.contextual_output == "concat" else hidden


def leading_specials(tokenizer) -> int:
    """How many special tokens (a BOS) the tokenizer puts before a text."""
    ids, specials = tokenizer("x")["input_ids"], set(tokenizer.all_special_ids)
    count = 0
    while count < len(ids) - 1 and ids[count] in specials:
        count += 1
    return count


def build_extras(config, model: nn.Module, tokenizer, folder: str | Path | None = None) -> nn.ModuleDict:
    """The modules `config` asks for, in float32, with the weights saved in `folder` if it has them."""
    hidden = model.config.get_text_config().hidden_size
    extras = nn.ModuleDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if config.latent_attention:
            extras["latent_attention"] = LatentAttention(hidden, config.latent_attention_latents,
                                                         config.latent_attention_heads)
        if config.contextual:
            saved = Path(folder) / CONTEXT_DIR if folder is not None else None
            source = str(saved) if saved is not None and saved.is_dir() else config.contextual
            extras["contextual"] = ContextualToken(source, hidden, leading_specials(tokenizer))
    if len(extras) and folder is not None:
        load_extras(extras, Path(folder))
    return extras


def extras_state(extras: nn.ModuleDict) -> dict[str, torch.Tensor]:
    """What lm2vec_extras.safetensors holds: every weight of the extras but the frozen pre-encoder's."""
    return {name: value for name, value in extras.state_dict().items() if not name.startswith(FROZEN)}


def load_extras(extras: nn.ModuleDict, folder: Path) -> None:
    """Put the weights saved in `folder` into `extras`; a folder without them leaves the fresh weights."""
    path = folder / EXTRAS_FILE
    if not path.is_file():
        logger.info("%s has no %s: %s start untrained", folder, EXTRAS_FILE, ", ".join(extras))
        return
    tensors, expected = load_file(path), extras_state(extras)
    if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
        raise ValueError(f"{path} does not fit this encoder's settings ({', '.join(extras)}): it holds "
                         f"{len(tensors)} tensors where {len(expected)} are expected, or other shapes")
    extras.load_state_dict(tensors, strict=False)


def save_extras(extras: nn.ModuleDict, folder: str | Path) -> None:
    """Write the extras' weights into `folder` (nothing when there are none)."""
    if not len(extras):
        return
    save_file({k: v.detach().cpu().contiguous() for k, v in extras_state(extras).items()}, Path(folder) / EXTRAS_FILE)
    if "contextual" in extras:
        extras["contextual"].save(Path(folder) / CONTEXT_DIR)
