"""Training objectives of LLM2Vec (arXiv 2404.05961): MNTP, unsupervised SimCSE, supervised contrastive.

Each loss has a `*_from_*` form on plain tensors so the maths is testable without a model; each
module ends with its `Objective` (base.py), which the loop finds by name in `OBJECTIVES`. Matryoshka
(matryoshka.py) is no objective of its own: SimCSE and supervised sum their loss over vector prefixes.
"""

from lm2vec.training.objectives.base import Objective
from lm2vec.training.objectives.contrastive import (
    distributed_info_nce,
    gather_with_grad,
    info_nce,
    info_nce_from_scores,
)
from lm2vec.training.objectives.matryoshka import matryoshka_loss
from lm2vec.training.objectives.mntp import (
    MNTPTask,
    mask_tokens,
    mntp_loss,
    mntp_loss_from_hidden,
    pack_blocks,
)
from lm2vec.training.objectives.simcse import SimCSETask, restore_dropout, set_dropout, simcse_loss
from lm2vec.training.objectives.supervised import SupervisedTask

OBJECTIVES: dict[str, type[Objective]] = {"mntp": MNTPTask, "simcse": SimCSETask, "supervised": SupervisedTask}

__all__ = [
    "OBJECTIVES",
    "MNTPTask",
    "Objective",
    "SimCSETask",
    "SupervisedTask",
    "pack_blocks",
    "distributed_info_nce",
    "gather_with_grad",
    "info_nce",
    "info_nce_from_scores",
    "mask_tokens",
    "matryoshka_loss",
    "mntp_loss",
    "mntp_loss_from_hidden",
    "restore_dropout",
    "set_dropout",
    "simcse_loss",
]
