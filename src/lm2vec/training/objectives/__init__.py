"""Training objectives of LLM2Vec (arXiv 2404.05961): MNTP, unsupervised SimCSE, supervised contrastive.

Each loss has a `*_from_*` form on plain tensors so the maths is testable without a model.
"""

from lm2vec.training.objectives.contrastive import (
    distributed_info_nce,
    gather_with_grad,
    info_nce,
    info_nce_from_scores,
)
from lm2vec.training.objectives.mntp import mask_tokens, mntp_loss, mntp_loss_from_hidden
from lm2vec.training.objectives.simcse import restore_dropout, set_dropout, simcse_loss

__all__ = [
    "distributed_info_nce",
    "gather_with_grad",
    "info_nce",
    "info_nce_from_scores",
    "mask_tokens",
    "mntp_loss",
    "mntp_loss_from_hidden",
    "restore_dropout",
    "set_dropout",
    "simcse_loss",
]
