"""Supervised contrastive training, step 4 of LLM2Vec (arXiv 2404.05961, §3): (query, positive,
hard negative) triplets, instructions on the query side, in-batch and hard negatives under InfoNCE
(the maths is objectives/contrastive.py).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from lm2vec.core.encoder import Encoder
from lm2vec.data.triplets import Triplet, load_pairs_source
from lm2vec.training.objectives.base import sources
from lm2vec.training.objectives.contrastive import distributed_info_nce
from lm2vec.training.recipe import StageConfig

logger = logging.getLogger(__name__)


class SupervisedTask:
    """Supervised contrastive: (query, positive, hard negative) with in-batch and hard negatives."""

    def __init__(self, stage: StageConfig, encoder: Encoder, lm_head=None) -> None:
        self.stage, self.encoder = stage, encoder

    def load_examples(self) -> list[Triplet]:
        triplets = [t for source in sources(self.stage.data) for t in load_pairs_source(source)]
        if not triplets:
            raise ValueError(f"stage {self.stage.name!r}: no triplets found in {self.stage.data}")
        if not all(t.negatives for t in triplets):  # batches must agree across processes: none then
            logger.warning("some triplets have no hard negative: training with in-batch negatives only")
            triplets = [replace(t, negatives=[]) for t in triplets]
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
        if all(t.negatives for t in triplets):
            batch["negative"] = self._side([t.negatives[0] for t in triplets], doc_instructions)
        return batch

    def loss(self, batch: dict[str, dict]) -> torch.Tensor:
        negatives = self.encoder.embed(batch["negative"]) if "negative" in batch else None
        queries, positives = self.encoder.embed(batch["query"]), self.encoder.embed(batch["positive"])
        return distributed_info_nce(queries, positives, negatives, scale=self.stage.scale)
