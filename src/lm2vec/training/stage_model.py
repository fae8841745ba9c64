"""The model a training stage starts from, loaded with the recipe's `model_kwargs` and quantisation.

Every load of the recipe's model (a stage's base, the LM head MNTP reads, the float32 copy an adapter is
merged into) takes the recipe's `model_kwargs` (attn_implementation, revision, token, ...; see
core/loading.py). A later stage loads the previous stage's own folder: the keys that point into the hub
(revision, subfolder, ...) mean nothing there and are left out. `quantization: 8bit | 4bit` loads the
frozen base through bitsandbytes (QLoRA); the LoRA weights on top and the optimiser stay float32.
"""

from __future__ import annotations

import logging

import torch

from lm2vec.core.encoder import Encoder, EncoderConfig, checkpoint_errors, load_saved_config
from lm2vec.core.loading import SOURCE_KEYS, hub_kwargs, places_itself, quantization_kwargs, source_kwargs
from lm2vec.core.models import resolve_model_path
from lm2vec.training.recipe import Recipe, StageConfig

logger = logging.getLogger(__name__)


def model_kwargs_for(recipe: Recipe, path: str) -> dict:
    """The recipe's model_kwargs for loading `path`: all of them for the recipe's own model; for a folder
    an earlier stage wrote, only those that do not point into the hub (trust_remote_code still counts)."""
    if path == recipe.model:
        return dict(recipe.model_kwargs)
    return {k: v for k, v in recipe.model_kwargs.items() if k not in SOURCE_KEYS or k == "trust_remote_code"}


def stage_load_kwargs(recipe: Recipe, path: str, dtype: torch.dtype, device: str) -> dict:
    """from_pretrained kwargs of a stage's base: model_kwargs, the stage's dtype and any quantisation
    (bitsandbytes places the weights itself, on this process's device)."""
    load = {**model_kwargs_for(recipe, path), "dtype": dtype, **quantization_kwargs(recipe.quantization, dtype)}
    if recipe.quantization and "device_map" not in load:
        load["device_map"] = {"": torch.device(device).index or 0} if str(device).startswith("cuda") else {"": device}
    return load


def load_stage_encoder(model_path: str, stage: StageConfig, recipe: Recipe, device: str,
                       dtype: torch.dtype = torch.float32, weights: str | None = None, place: bool = True):
    """Encoder on the stage's starting weights (+ the frozen LM head for MNTP), base weights in `dtype`.
    `weights`: load the model's weights from there instead (the recipe's base, for stacked adapters);
    the tokenizer and the training history still come from `model_path`. `place=False` leaves the
    backbone on the CPU (FSDP moves it to the device one sharded layer at a time)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    source = weights or model_path
    load = stage_load_kwargs(recipe, source, dtype, device)
    path = resolve_model_path(model_path, **hub_kwargs(model_kwargs_for(recipe, model_path)))
    weights_path = resolve_model_path(source, **hub_kwargs(load))
    lm_head = None
    with checkpoint_errors(weights_path):
        tokenizer = AutoTokenizer.from_pretrained(path, **source_kwargs(model_kwargs_for(recipe, model_path)))
        if stage.objective == "mntp":
            full, info = AutoModelForCausalLM.from_pretrained(weights_path, output_loading_info=True, **load)
            backbone, lm_head = full.base_model, full.get_output_embeddings()
            _restore_untied_head(lm_head, info["missing_keys"], recipe, dtype)
            lm_head.requires_grad_(False)
        else:
            backbone = AutoModel.from_pretrained(weights_path, **load)
    history = load_saved_config(path).training  # earlier stages, when starting from one of our encoders
    config = EncoderConfig(pooling=recipe.pooling, bidirectional=recipe.bidirectional, max_length=stage.max_length,
                           base_model=recipe.model, training=dict(history), **recipe.encoder)
    if place and not places_itself(load):
        backbone.to(device)
    encoder = Encoder(backbone, tokenizer, config, folder=path)  # extra modules as the last stage left them
    if lm_head is not None and not places_itself(load):
        lm_head.to(device)
    return encoder, lm_head


def _restore_untied_head(lm_head: torch.nn.Module, missing: list[str], recipe: Recipe, dtype: torch.dtype) -> None:
    """An lm2vec stage saves the backbone only; a model with an untied LM head (one not shared with the
    input embeddings) then loads a freshly initialised head. No stage trains the head, so the recipe's
    base model holds the right one: copy it in."""
    if not any("lm_head" in key for key in missing):
        return
    from transformers import AutoModelForCausalLM

    kwargs = {**model_kwargs_for(recipe, recipe.model), "dtype": dtype}
    base = resolve_model_path(recipe.model, **hub_kwargs(kwargs))
    original = AutoModelForCausalLM.from_pretrained(base, **kwargs).get_output_embeddings()
    lm_head.load_state_dict(original.state_dict())
    logger.info("MNTP: LM head taken from %s (the previous stage saved the backbone only)", recipe.model)


def load_float32_base(recipe: Recipe, model_path: str) -> torch.nn.Module:
    """The stage's starting weights in float32 on the CPU, unquantised: what a trained adapter is merged
    into (never its bf16 or 4-bit copy, whose rounding would erase part of the adapter)."""
    from transformers import AutoModel

    kwargs = {k: v for k, v in model_kwargs_for(recipe, model_path).items() if k != "device_map"}
    path = resolve_model_path(model_path, **hub_kwargs(kwargs))
    return AutoModel.from_pretrained(path, **{**kwargs, "dtype": torch.float32})
