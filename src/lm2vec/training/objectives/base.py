"""What every objective gives the training loop: its examples, their lengths, batches and a loss.

The loop (training/loop.py) knows nothing about objectives; objectives know nothing about
optimisers, checkpoints or processes. Each objective module holds its maths (on plain tensors,
testable without a model) and, below it, its `Objective` implementation. All of them run on the
same Encoder (tokenize -> collate -> hidden states / pooled vectors), so what is trained is exactly
what `encode` later uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from lm2vec.data.text import load_texts
from lm2vec.training.recipe import StageConfig


@runtime_checkable
class Objective(Protocol):
    """Built as `cls(stage, encoder, lm_head)`; `lm_head` is None for the objectives that pool."""

    def load_examples(self) -> Sequence[Any]:
        """Every training example of the stage (texts, token rows or triplets), loaded once."""

    def lengths(self, examples: Sequence[Any]) -> list[int]:
        """A size per example (tokens or characters), for grouping similar lengths in a batch."""

    def collate(self, examples: Sequence[Any], generator: torch.Generator) -> dict[str, Any]:
        """One batch of tensors from examples; random choices (masks) come from `generator` only."""

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The scalar loss of one batch (on this process; contrastive losses gather across processes)."""


@runtime_checkable
class ContrastiveObjective(Objective, Protocol):
    """A loss over pooled embeddings only, split so that GradCache (training/gradcache.py) can embed
    the batch in chunks: `loss(batch) == loss_from_embeddings({name: embed(side) for name, side in sides}, batch)`."""

    def embedding_sides(self, batch: dict[str, Any]) -> list[tuple[str, dict[str, torch.Tensor]]]:
        """(name, collated texts) in the order they are embedded; the same texts may appear twice (SimCSE)."""

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """The loss from every side's (rows, D) embeddings of this process (and the batch's other fields)."""


def embed_sides(embed, sides: list[tuple[str, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Each side embedded in one pass, in order (so dropout draws come in the order they always did)."""
    return {name: embed(side) for name, side in sides}


def sources(data: str | list[str]) -> list[str]:
    return [data] if isinstance(data, str) else list(data)


def load_corpus(stage: StageConfig) -> list[str]:
    """Raw texts for MNTP / SimCSE from one or more sources (files, hf:, builtin:)."""
    texts = [t for source in sources(stage.data) for t in load_texts(source, unit=stage.text_unit, min_chars=5)]
    if not texts:
        raise ValueError(f"stage {stage.name!r}: no texts found in {stage.data}")
    return texts[: stage.data_limit]
