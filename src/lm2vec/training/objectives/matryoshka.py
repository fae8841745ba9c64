"""Matryoshka representation learning over the contrastive objectives (Kusupati et al. 2022,
arXiv 2205.13147), with the semantics of sentence-transformers' `MatryoshkaLoss`.

The loss is sum_d w_d * loss(embeddings truncated to their first d components): every prefix of the
vector is trained to be an embedding of its own, so `encode(..., dimensions=d)` later keeps most of the
quality at a fraction of the size. Truncation is a slice; the contrastive losses compare by cosine
(objectives/contrastive.py `cosine_scores`), which renormalises each prefix as sentence-transformers'
`shrink` does. The wrapper works on the embeddings dict of `loss_from_embeddings`, so GradCache
(embeddings as cached leaves) and the cross-process gather (inside each per-dimension loss) are the same
code paths as without it: the model is run once per batch whatever the number of dimensions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from lm2vec.training.recipe import RecipeError, StageConfig

logger = logging.getLogger(__name__)

EmbeddingLoss = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def truncate_sides(embeddings: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """Every side's vectors cut to their first `dim` components ((rows, D) or (B, K, D) alike)."""
    return {name: vectors[..., :dim] for name, vectors in embeddings.items()}


def matryoshka_loss(loss_fn: EmbeddingLoss, embeddings: dict[str, torch.Tensor], dims: Sequence[int],
                    weights: Sequence[float] | None = None) -> torch.Tensor:
    """sum_i weights[i] * loss_fn(embeddings truncated to dims[i]); weights default to 1 (as in
    sentence-transformers). Gradients reach the full vectors through the slices."""
    weights = [1.0] * len(dims) if weights is None else weights
    return sum(w * loss_fn(truncate_sides(embeddings, d)) for d, w in zip(dims, weights, strict=True))


class Nesting:
    """A stage's Matryoshka setting, applied to a loss over embeddings; the identity when it has none."""

    def __init__(self, dims: Sequence[int] | None = None, weights: Sequence[float] | None = None) -> None:
        self.dims, self.weights = (list(dims) if dims else None), (list(weights) if weights else None)

    @classmethod
    def for_stage(cls, stage: StageConfig, embedding_dim: int) -> Nesting:
        """The stage's dims, checked against the model's width now that the model is known."""
        dims = stage.matryoshka_dims
        if dims:
            too_big = [d for d in dims if d > embedding_dim]
            if too_big:
                raise RecipeError(f"stage {stage.name!r}: matryoshka_dims {too_big} exceed the model's embedding "
                                  f"dimension {embedding_dim}; use dimensions <= {embedding_dim}")
            if embedding_dim not in dims:
                logger.warning("stage %s: matryoshka_dims %s leave out the full dimension %d, which then is not "
                               "trained directly; add it unless you only ever use truncated vectors",
                               stage.name, dims, embedding_dim)
        return cls(dims, stage.matryoshka_weights)

    def __call__(self, loss_fn: EmbeddingLoss, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.dims is None:
            return loss_fn(embeddings)
        return matryoshka_loss(loss_fn, embeddings, self.dims, self.weights)
