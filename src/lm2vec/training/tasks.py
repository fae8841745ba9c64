"""What each objective needs from the training loop: its examples, how to batch them, its loss.

The loop in train.py knows nothing about objectives; these three small classes know nothing about
optimisers, checkpoints or processes. All three run on the same Encoder (tokenize -> collate ->
hidden states / pooled vectors), so what is trained is exactly what `encode` later uses.
"""

from __future__ import annotations

import logging

import torch

from lm2vec.core.batching import pad_batch
from lm2vec.core.encoder import Encoder
from lm2vec.data.text import load_texts
from lm2vec.data.triplets import Triplet, load_pairs_source
from lm2vec.training.objectives.contrastive import distributed_info_nce
from lm2vec.training.objectives.mntp import mask_tokens, mntp_loss_from_hidden
from lm2vec.training.objectives.simcse import simcse_loss
from lm2vec.training.recipe import StageConfig

logger = logging.getLogger(__name__)


def _sources(data: str | list[str]) -> list[str]:
    return [data] if isinstance(data, str) else list(data)


def load_corpus(stage: StageConfig) -> list[str]:
    """Raw texts for MNTP / SimCSE from one or more sources (files, hf:, builtin:)."""
    texts = [t for source in _sources(stage.data) for t in load_texts(source, unit=stage.text_unit, min_chars=5)]
    if not texts:
        raise ValueError(f"stage {stage.name!r}: no texts found in {stage.data}")
    return texts[: stage.data_limit]


def pack_blocks(documents: list[list[int]], block: int, separator: int | None, prefix: list[int]) -> list[list[int]]:
    """Concatenate token lists (a `separator` after each document) and cut the stream into blocks of
    `block` tokens, each opened by `prefix` (the tokenizer's BOS, if it adds one). Every stream token
    lands in exactly one block; the last block may be shorter (it is padded, never dropped).

    Documents share a block as in llm2vec's run_mntp (Hugging Face `group_texts`): attention is
    bidirectional within a block, across document boundaries, and never between blocks. The loss
    keeps its definition: masked token i is predicted from the output at i-1 of its own block.
    """
    room = block - len(prefix)
    if room < 1:
        raise ValueError(f"max_length {block} leaves no room after the {len(prefix)} prefix tokens")
    stream = [t for doc in documents for t in (doc + ([separator] if separator is not None else []))]
    return [prefix + stream[start : start + room] for start in range(0, len(stream), room)]


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

    def load_examples(self) -> list[list[int]]:
        """Token-id rows: packed blocks of max_length tokens, or one (truncated) text per row."""
        texts = load_corpus(self.stage)
        if not self.stage.pack:
            return [t.ids for t in self.encoder.tokenize([(None, text) for text in texts])]
        tokenizer = self.encoder.tokenizer
        documents = tokenizer(texts, add_special_tokens=False)["input_ids"]
        with_specials = tokenizer("x")["input_ids"]
        prefix = with_specials[: len(with_specials) - len(tokenizer("x", add_special_tokens=False)["input_ids"])]
        blocks = pack_blocks(documents, self.stage.max_length, tokenizer.eos_token_id, prefix)
        logger.info("MNTP: %d texts packed into %d blocks of %d tokens", len(texts), len(blocks), self.stage.max_length)
        return blocks

    def lengths(self, examples: list[list[int]]) -> list[int]:
        return [len(ids) for ids in examples]

    def collate(self, rows: list[list[int]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = pad_batch(rows, [0] * len(rows), self.encoder.pad_token_id, self.encoder.config.padding_side)
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

    def lengths(self, texts: list[str]) -> list[int]:
        return [len(t) for t in texts]  # characters: a free proxy for token counts, enough for grouping

    def collate(self, texts: list[str], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Both views share one batch; `instruction` (attended, not pooled) trains for instructed use."""
        return self.encoder.collate(self.encoder.tokenize([(self.stage.instruction, t) for t in texts]))

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

    def lengths(self, triplets: list[Triplet]) -> list[int]:
        return [len(t.query) + len(t.positive) + sum(map(len, t.negatives[:1])) for t in triplets]

    def _side(self, texts: list[str], instructions: list[str | None]) -> dict[str, torch.Tensor]:
        return self.encoder.collate(self.encoder.tokenize(list(zip(instructions, texts))))

    def collate(self, triplets: list[Triplet], generator: torch.Generator) -> dict[str, dict]:
        instructions = [(t.instruction or self.stage.instruction) if self.stage.use_instructions else None
                        for t in triplets]
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
