"""Which examples a step trains on, and its random draws: stateless functions of (seed, step, rank).

Nothing here keeps state between steps, so a run resumed from the checkpoint of step s replays exactly
what an uninterrupted run would have done, and N processes split each global batch the way one
process with N times the batch would see it.
"""

from __future__ import annotations

import torch

from lm2vec.training.recipe import StageConfig

LENGTH_GROUP_STEPS = 16  # length grouping sorts windows of this many steps' examples


def epoch_order(n: int, seed: int, epoch: int, lengths: list[int] | None = None, per_step: int = 1) -> list[int]:
    """The example order of one epoch: a seeded permutation. With `lengths`, each window of
    LENGTH_GROUP_STEPS steps is sorted by length and cut into steps, and the steps of a window are
    shuffled: every step gets texts of similar length (little padding) and the order stays random
    across steps (as transformers' group_by_length sampler does)."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=generator)
    if lengths is None:
        return order.tolist()
    window, out = per_step * LENGTH_GROUP_STEPS, []
    for start in range(0, n, window):
        block = order[start : start + window]
        block = block[torch.argsort(torch.tensor([lengths[i] for i in block]), stable=True)]
        steps = block.split(per_step)
        out += [int(i) for k in torch.randperm(len(steps), generator=generator).tolist() for i in steps[k]]
    return out


def batch_indices(n: int, step: int, micro: int, stage: StageConfig, rank: int, world: int,
                  lengths: list[int] | None = None, cache: dict | None = None) -> list[int]:
    """Indices of this process's share of micro-batch `micro` of `step`: a stateless function of
    (seed, step), walking one seeded order per epoch, so resuming replays the same order.
    `cache` (epoch -> order) saves recomputing an epoch's order at every call."""
    per_step = stage.batch_size * world * stage.grad_accum
    start = step * per_step + micro * stage.batch_size * world + rank * stage.batch_size
    out, cache = [], {} if cache is None else cache
    for flat in range(start, start + stage.batch_size):
        epoch = flat // n
        if epoch not in cache:
            cache.clear()  # one epoch at a time is all a step needs
            cache[epoch] = epoch_order(n, stage.seed, epoch, lengths, per_step)
        out.append(cache[epoch][flat % n])
    return out


def step_seed(stage: StageConfig, step: int, rank: int = 0) -> int:
    return (stage.seed * 1_000_003 + step * 7919 + rank) % (2**63)


def step_generator(stage: StageConfig, step: int, rank: int) -> torch.Generator:
    """Seed the global RNG (dropout) and return a generator (masking) for this step and process."""
    seed = step_seed(stage, step, rank)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1)
