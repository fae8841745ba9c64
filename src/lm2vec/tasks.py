"""What each objective needs from the training loop: its examples, how to batch them, its loss.

The loop in train.py knows nothing about objectives; these three small classes know nothing about
optimisers, checkpoints or processes. All three run on the same Encoder (tokenize -> collate ->
hidden states / pooled vectors), so what is trained is exactly what `encode` later uses.
"""

from __future__ import annotations

import logging

import torch

from .config import StageConfig
from .data.text import load_texts
from .data.triplets import Triplet, load_pairs_source
from .encoder import Encoder
from .objectives.contrastive import distributed_info_nce
from .objectives.mntp import mask_tokens, mntp_loss_from_hidden
from .objectives.simcse import simcse_loss

logger = logging.getLogger(__name__)


def _sources(data: str | list[str]) -> list[str]:
    return [data] if isinstance(data, str) else list(data)


def load_corpus(stage: StageConfig) -> list[str]:
    """Raw texts for MNTP / SimCSE from one or more sources (files, hf:, builtin:)."""
    texts = [t for source in _sources(stage.data) for t in load_texts(source, unit=stage.text_unit, min_chars=5)]
    if not texts:
        raise ValueError(f"stage {stage.name!r}: no texts found in {stage.data}")
    return texts[: stage.data_limit]


class MNTPTask:
    """Masked next-token prediction: mask tokens, predict token i from the output at i-1."""

    def __init__(self, stage: StageConfig, encoder: Encoder, lm_head: torch.nn.Module) -> None:
        self.stage, self.encoder, self.lm_head = stage, encoder, lm_head
        tokenizer = encoder.tokenizer
        self.mask_id = tokenizer.convert_tokens_to_ids(stage.mask_token)
        ids = tokenizer(stage.mask_token, add_special_tokens=False)["input_ids"]
        if self.mask_id is None or self.mask_id == tokenizer.unk_token_id or ids != [self.mask_id]:
            raise ValueError(f"mask_token {stage.mask_token!r} is not a single token of this tokenizer")
        self.specials = tokenizer.all_special_ids
        self.vocab = encoder.model.config.get_text_config().vocab_size
        self.softcap = getattr(encoder.model.config.get_text_config(), "final_logit_softcapping", None)

    def load_examples(self) -> list[str]:
        return load_corpus(self.stage)

    def collate(self, texts: list[str], generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = self.encoder.collate(self.encoder.tokenize([(None, t) for t in texts]))
        masked, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], self.mask_id, self.vocab,
                                     self.stage.mask_rate, self.stage.mask_strategy, self.specials, generator)
        return {**batch, "input_ids": masked, "labels": labels}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder.hidden_states(batch)  # (B, T, D)
        return mntp_loss_from_hidden(hidden, self.lm_head, batch["labels"].to(hidden.device), softcap=self.softcap)


class SimCSETask:
    """Unsupervised SimCSE: the same texts twice, different dropout; other texts are negatives."""

    def __init__(self, stage: StageConfig, encoder: Encoder, lm_head=None) -> None:
        self.stage, self.encoder = stage, encoder

    def load_examples(self) -> list[str]:
        return load_corpus(self.stage)

    def collate(self, texts: list[str], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.encoder.collate(self.encoder.tokenize([(None, t) for t in texts]))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return simcse_loss(self.encoder.embed, batch, scale=self.stage.scale)


class SupervisedTask:
    """Supervised contrastive: (query, positive, hard negative) with in-batch and hard negatives."""

    def __init__(self, stage: StageConfig, encoder: Encoder, lm_head=None) -> None:
        self.stage, self.encoder = stage, encoder
        self.use_negatives = True

    def load_examples(self) -> list[Triplet]:
        triplets = [t for source in _sources(self.stage.data) for t in load_pairs_source(source)]
        if not triplets:
            raise ValueError(f"stage {self.stage.name!r}: no triplets found in {self.stage.data}")
        self.use_negatives = all(t.negatives for t in triplets)
        if not self.use_negatives:
            logger.warning("some triplets have no hard negative: training with in-batch negatives only")
        return triplets[: self.stage.data_limit]

    def _side(self, texts: list[str], instructions: list[str | None]) -> dict[str, torch.Tensor]:
        return self.encoder.collate(self.encoder.tokenize(list(zip(instructions, texts))))

    def collate(self, triplets: list[Triplet], generator: torch.Generator) -> dict[str, dict]:
        instructions = [t.instruction or self.stage.instruction for t in triplets]
        doc_instructions = instructions if self.stage.symmetric else [None] * len(triplets)
        batch = {"query": self._side([t.query for t in triplets], instructions),
                 "positive": self._side([t.positive for t in triplets], doc_instructions)}
        if self.use_negatives:
            batch["negative"] = self._side([t.negatives[0] for t in triplets], doc_instructions)
        return batch

    def loss(self, batch: dict[str, dict]) -> torch.Tensor:
        negatives = self.encoder.embed(batch["negative"]) if "negative" in batch else None
        queries, positives = self.encoder.embed(batch["query"]), self.encoder.embed(batch["positive"])
        return distributed_info_nce(queries, positives, negatives, scale=self.stage.scale)


TASKS = {"mntp": MNTPTask, "simcse": SimCSETask, "supervised": SupervisedTask}
