"""Unsupervised SimCSE, step 3 of LLM2Vec (BehnamGhader et al. 2024, arXiv 2404.05961, §2.2).

SimCSE (Gao et al. 2021, arXiv 2104.08821): encode the same batch twice in train mode; the two views
differ only by dropout noise, and each sentence must find its other view among the batch.
Decoders usually ship with dropout 0, so LLM2Vec turns attention dropout on (0.3) for this step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lm2vec.core.encoder import Encoder
from lm2vec.training.objectives.base import load_corpus
from lm2vec.training.objectives.contrastive import distributed_info_nce
from lm2vec.training.objectives.matryoshka import Nesting
from lm2vec.training.recipe import StageConfig

# Where Hugging Face decoders keep dropout rates, by attribute name (a table, not per-model code).
# Float attributes are read in forward (llama/qwen2/mistral/gemma `self.attention_dropout`,
# bloom/falcon `self.hidden_dropout`); nn.Dropout children are applied or read as `.p` (gpt2 sdpa).
# Some attention forwards read the config (gptj `config.attn_pdrop`, gpt_neo `config.attention_dropout`).
ATTENTION_NAMES = {"attention_dropout", "attn_dropout", "attn_pdrop", "attention_probs_dropout_prob"}
HIDDEN_NAMES = {
    "hidden_dropout", "hidden_dropout_prob", "resid_pdrop", "embd_pdrop", "residual_dropout",
    "resid_dropout", "embedding_dropout", "embed_dropout", "dropout",
}  # fmt: skip
CONFIG_SKIP = {"dropout"}  # too vague in configs (opt copies it into modules, found there anyway)


def _kind(module: nn.Module, name: str) -> str | None:
    """'attention' or 'hidden' for a dropout attribute / child called `name`; None if not a dropout rate.

    A plain `dropout` inside an *Attention module (opt, bert-like) drops attention probabilities.
    """
    if name in ATTENTION_NAMES or (name == "dropout" and "Attention" in type(module).__name__):
        return "attention"
    return "hidden" if name in HIDDEN_NAMES else None


def _dropout_slots(model: nn.Module) -> dict[str, tuple[Any, str, str]]:
    """Every dropout rate in model: dotted path -> (owner object, attribute, kind).

    Covers float attributes of modules, `p` of every nn.Dropout (unknown names count as hidden) and
    rate fields of each distinct config. Adapter dropout (peft `lora_dropout`) belongs to LoRA's config.
    """
    slots, configs = {}, {}
    for path, module in model.named_modules():
        if "lora_" in path:
            continue
        prefix = f"{path}." if path else ""
        for name, value in vars(module).items():
            if isinstance(value, float | int) and not isinstance(value, bool) and _kind(module, name):
                slots[prefix + name] = (module, name, _kind(module, name))
        for name, child in module.named_children():
            if isinstance(child, nn.Dropout):
                slots[f"{prefix}{name}.p"] = (child, "p", _kind(module, name) or "hidden")
        config = getattr(module, "config", None)
        if config is not None and id(config) not in configs:
            configs[id(config)] = (f"{prefix}config", config)
    for path, config in configs.values():
        for name in (ATTENTION_NAMES | HIDDEN_NAMES) - CONFIG_SKIP:
            if isinstance(getattr(config, name, None), float | int):
                slots[f"{path}.{name}"] = (config, name, "attention" if name in ATTENTION_NAMES else "hidden")
    return slots


def set_dropout(model: nn.Module, attention: float | None = None, hidden: float | None = None) -> dict:
    """Set attention-probability and/or hidden (residual, embedding) dropout on any HF decoder.

    None leaves that kind untouched. Returns {dotted path: previous value} for `restore_dropout`.
    Llama-family models have no hidden dropout at all, so `hidden` changes nothing there.
    Dropout only acts in train mode (`model.train()`), as usual.
    """
    rates = {"attention": attention, "hidden": hidden}
    previous = {}
    for path, (owner, name, kind) in _dropout_slots(model).items():
        if rates[kind] is not None:
            previous[path] = getattr(owner, name)
            setattr(owner, name, float(rates[kind]))
    return previous


def restore_dropout(model: nn.Module, previous: dict) -> None:
    """Put back the values that `set_dropout` returned."""
    slots = _dropout_slots(model)
    for path, value in previous.items():
        owner, name, _ = slots[path]
        setattr(owner, name, value)


def simcse_loss(embed_fn: Callable[[Any], torch.Tensor], batch: Any, scale: float = 20.0) -> torch.Tensor:
    """SimCSE loss: InfoNCE between two dropout views of the same batch, in-batch negatives across ranks.

    embed_fn(batch) -> (B, D) pooled embeddings with the model in train mode; it is called twice and the
    views differ only through dropout (see `set_dropout`; LLM2Vec uses attention dropout 0.3).
    """
    view1 = embed_fn(batch)  # (B, D)
    view2 = embed_fn(batch)  # (B, D)
    return distributed_info_nce(view1, view2, scale=scale)


class SimCSETask:
    """Unsupervised SimCSE: the same texts twice, different dropout; other texts are negatives."""

    def __init__(self, stage: StageConfig, encoder: Encoder, lm_head=None) -> None:
        self.stage, self.encoder = stage, encoder
        self.nesting = Nesting.for_stage(stage, encoder.embedding_dim)  # Matryoshka dims, if any

    def load_examples(self) -> list[str]:
        return load_corpus(self.stage)

    def lengths(self, texts: list[str]) -> list[int]:
        return [len(t) for t in texts]  # characters: a free proxy for token counts, enough for grouping

    def collate(self, texts: list[str], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Both views share one batch; `instruction` (attended, not pooled) trains for instructed use."""
        return self.encoder.collate(self.encoder.tokenize([(self.stage.instruction, t) for t in texts]))

    def embedding_sides(self, batch: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
        return [("view1", batch), ("view2", batch)]  # the same texts twice: only dropout tells them apart

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor], batch=None) -> torch.Tensor:
        return self.nesting(lambda e: distributed_info_nce(e["view1"], e["view2"], scale=self.stage.scale), embeddings)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Both views in one forward of the batch stacked on itself, as SimCSE's own code runs them: each
        row draws its own dropout masks, so the copies still differ by dropout alone, and one pass over
        2B rows costs less than two over B (bf16 SimCSE 32 x 32 on a CPU: 2.85 -> 2.52 s a step, docs/performance.md).
        GradCache (`embedding_sides`) still embeds the views apart, a chunk at a time."""
        view1, view2 = self.encoder.embed({key: torch.cat([value, value]) for key, value in batch.items()}).chunk(2)
        return self.loss_from_embeddings({"view1": view1, "view2": view2}, batch)
