"""Supervised contrastive training, step 4 of LLM2Vec (arXiv 2404.05961, §3): (query, positive,
hard negative) triplets, instructions on the query side, in-batch and hard negatives under InfoNCE
(the maths is objectives/contrastive.py).
"""

from __future__ import annotations

import hashlib
import logging

import torch
import torch.distributed as dist

from lm2vec.core.encoder import Encoder
from lm2vec.data.triplets import Triplet, load_pairs_source
from lm2vec.training.objectives.base import embed_sides, sources
from lm2vec.training.objectives.contrastive import distributed_info_nce, false_negatives, gather_rows
from lm2vec.training.objectives.matryoshka import Nesting
from lm2vec.training.recipe import StageConfig

logger = logging.getLogger(__name__)


def text_ids(texts: list[str]) -> torch.Tensor:
    """A stable 64-bit hash per text (the same in every process, unlike `hash`), to find duplicates."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little", signed=True)
                         for t in texts], dtype=torch.long)


class SupervisedTask:
    """Supervised contrastive: (query, positive, hard negatives) with in-batch and hard negatives.

    Every hard negative of every triplet is a candidate for every query; triplets without one simply
    add none. With `mask_duplicates` (default), a candidate that repeats the text a query should find
    (SNLI repeats premises, so one batch can hold two entailments of one premise) is no negative for it.
    """

    def __init__(self, stage: StageConfig, encoder: Encoder, lm_head=None) -> None:
        self.stage, self.encoder = stage, encoder
        self.nesting = Nesting.for_stage(stage, encoder.embedding_dim)  # Matryoshka dims, if any

    def load_examples(self) -> list[Triplet]:
        triplets = [t for source in sources(self.stage.data) for t in load_pairs_source(source)]
        if not triplets:
            raise ValueError(f"stage {self.stage.name!r}: no triplets found in {self.stage.data}")
        missing = sum(not t.negatives for t in triplets)
        if missing:
            logger.warning("%d of %d triplets have no hard negative: they train with in-batch negatives",
                           missing, len(triplets))
        return triplets[: self.stage.data_limit]

    def lengths(self, triplets: list[Triplet]) -> list[int]:
        return [len(t.query) + len(t.positive) + sum(map(len, t.negatives)) for t in triplets]

    def _side(self, texts: list[str], instructions: list[str | None]) -> dict[str, torch.Tensor]:
        return self.encoder.collate(self.encoder.tokenize(list(zip(instructions, texts))))

    def collate(self, triplets: list[Triplet], generator: torch.Generator) -> dict[str, dict]:
        instructions = [(t.instruction or self.stage.instruction) if self.stage.use_instructions else None
                        for t in triplets]
        doc_instructions = instructions if self.stage.symmetric else [None] * len(triplets)
        negatives = [(doc, n) for t, doc in zip(triplets, doc_instructions) for n in t.negatives]
        batch = {"query": self._side([t.query for t in triplets], instructions),
                 "positive": self._side([t.positive for t in triplets], doc_instructions),
                 "ids": {"query": text_ids([t.query for t in triplets]),
                         "positive": text_ids([t.positive for t in triplets]),
                         "negative": text_ids([n for _, n in negatives])}}
        if negatives:
            batch["negative"] = self._side([n for _, n in negatives], [doc for doc, _ in negatives])
        return batch

    def embedding_sides(self, batch: dict[str, dict]) -> list[tuple[str, dict[str, torch.Tensor]]]:
        names = ("negative", "query", "positive") if "negative" in batch else ("query", "positive")
        return [(name, batch[name]) for name in names]

    def loss_from_embeddings(self, embeddings: dict[str, torch.Tensor], batch: dict[str, dict]) -> torch.Tensor:
        exclude = self._false_negatives(batch["ids"], len(embeddings["query"])) if self.stage.mask_duplicates else None
        return self.nesting(lambda e: distributed_info_nce(e["query"], e["positive"], e.get("negative"),
                                                           self.stage.scale, exclude), embeddings)

    def _false_negatives(self, ids: dict[str, torch.Tensor], count: int) -> torch.Tensor:
        """The duplicate mask over the global batch (ids gathered from every process)."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        glob = {name: gather_rows(value, grad=False) for name, value in ids.items()}
        return false_negatives(glob["query"], glob["positive"], glob["negative"], rank * count, count)

    def loss(self, batch: dict[str, dict]) -> torch.Tensor:
        return self.loss_from_embeddings(embed_sides(self.encoder.embed, self.embedding_sides(batch)), batch)
